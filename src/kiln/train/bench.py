"""`kiln bench`: timed training steps of a recipe, optionally against a bare forward/backward/step loop."""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kiln.train.config import TrainConfig
from kiln.train.run import build_run
from kiln.train.trainer import Trainer


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench(cfg: TrainConfig, steps: int = 20, warmup: int = 5, compare_bare: bool = False) -> dict[str, float]:
    """Median tokens/s of full trainer steps (data, schedule, loss, clipping, metrics), and of a bare loop."""
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        cfg.trainer.run_dir = tmp
        cfg.trainer.steps = 10**9
        cfg.eval.every, cfg.eval.samples, cfg.checkpoint.every, cfg.checkpoint.save_final = 0, 0, 0, False
        cfg.logging.progress, cfg.trainer.log_every = "lines", 10**9
        run = build_run(cfg)
        trainer, device = run.trainer, run.trainer.device
        for cb in trainer.callbacks:
            cb.on_fit_start(trainer)
        fixed = [next(trainer.batches) for _ in range(cfg.trainer.grad_accum)]

        def full_step() -> None:
            start = time.perf_counter()
            for cb in trainer.callbacks:
                cb.on_step_start(trainer)
            micro = [next(trainer.batches) for _ in range(cfg.trainer.grad_accum)]
            metrics = trainer.train_step(micro)
            metrics["step_time"] = time.perf_counter() - start
            metrics.update(trainer.throughput(metrics["step_time"]))
            for cb in trainer.callbacks:
                cb.on_step_end(trainer, metrics)

        def bare_step() -> None:
            for batch in fixed:
                x, y = batch.input_ids.to(device), batch.labels.to(device)
                with trainer.autocast():
                    logits = trainer.model(x)
                F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100).backward()
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        for _ in range(warmup):
            full_step()
            if compare_bare:
                bare_step()
        times: dict[str, list[float]] = {"full": [], "bare": []}
        for _ in range(steps):  # alternate A and B so drift in machine speed hits both alike
            times["full"].append(_timed(full_step, device))
            if compare_bare:
                times["bare"].append(_timed(bare_step, device))
    return report(cfg, trainer, times, device)


def report(cfg: TrainConfig, trainer: Trainer, times: dict[str, list[float]], device: torch.device) -> dict[str, float]:
    tokens = cfg.tokens_per_step
    result = {"tokens_per_s": tokens / statistics.median(times["full"]), "peak_memory_gb": _peak_memory_gb(device)}
    mfu = trainer.mfu(result["tokens_per_s"])  # clamped to 100%, as in training
    if mfu is not None:
        result["mfu"] = mfu
    print(f"kiln bench: {len(times['full'])} timed steps of {tokens:,} tokens on {device}, {cfg.trainer.precision}")
    print(f"  trainer: {result['tokens_per_s']:,.0f} tokens/s (median)"
          + (f", MFU {result['mfu']:.1%}" if "mfu" in result else ""))
    print(f"  peak FLOP/s for MFU: {trainer.peak_source}")
    if times["bare"]:
        result["bare_tokens_per_s"] = tokens / statistics.median(times["bare"])
        result["ratio"] = result["tokens_per_s"] / result["bare_tokens_per_s"]
        print(f"  bare loop: {result['bare_tokens_per_s']:,.0f} tokens/s; trainer/bare = {result['ratio']:.3f}")
    print(f"  peak memory: {result['peak_memory_gb']:.2f} GiB")
    return result
