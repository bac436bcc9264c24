"""Timed trainer steps on every rank of a (possibly distributed) run: shared by the data-parallel benchmarks."""

from __future__ import annotations

import resource
import statistics
import tempfile
import time

import torch

from kiln import distributed
from kiln.train.config import TrainConfig
from kiln.train.run import build_run, pick_device


def time_training(cfg: TrainConfig, steps: int, warmup: int) -> dict[str, float] | None:
    """Median global tokens/s (and MFU) of full trainer steps; the figures on rank 0, None on the other ranks.

    Every step ends in an all-reduce, so rank 0's step time is the job's. Evaluation and checkpoints are off.
    """
    device_type = pick_device(cfg.trainer.device).type
    owns_group = distributed.init_distributed(device_type, cfg.distributed.timeout_s,
                                              force=cfg.distributed.strategy not in ("auto", "none"))
    with tempfile.TemporaryDirectory(prefix="kiln-dp-bench-") as tmp:
        cfg.trainer.run_dir, cfg.trainer.steps = tmp, 10**9
        cfg.eval.every, cfg.eval.samples, cfg.checkpoint.every, cfg.checkpoint.save_final = 0, 0, 0, False
        cfg.logging.progress, cfg.trainer.log_every = "lines", 10**9
        run = build_run(cfg)
        trainer = run.trainer
        times = [_timed_step(trainer, cfg.trainer.grad_accum) for _ in range(warmup + steps)][warmup:]
    ranks = distributed.world_size()
    result = {"ranks": ranks, "tokens_per_s": cfg.tokens_per_step * ranks / statistics.median(times),
              "step_s": statistics.median(times), "peak_memory_gb": _peak_memory_gb(trainer.device)}
    if trainer.peak_flops:
        result["mfu"] = trainer.flops_per_token * result["tokens_per_s"] / ranks / trainer.peak_flops
    rank0 = distributed.is_rank0()
    if owns_group:
        distributed.shutdown_distributed()
    return result if rank0 else None


def _timed_step(trainer, grad_accum: int) -> float:
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    trainer.train_step([next(trainer.batches) for _ in range(grad_accum)])
    sync()
    return time.perf_counter() - start


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
