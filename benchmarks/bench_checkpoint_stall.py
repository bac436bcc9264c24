"""Per-checkpoint training stall, synchronous vs asynchronous checkpointing, measured side by side.

    python benchmarks/bench_checkpoint_stall.py [--preset olmo2-20m] [--checkpoints 4] [--steps-between 3]

The stall of a checkpoint is the time the training loop is blocked by it: the `save()` call itself plus, for an
asynchronous save, any wait for the previous one to finish (and its manifest to be sealed) at the next save.
Sync and async runs alternate checkpoint by checkpoint, each in its own run folder, on the same model size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from kiln.train.config import load_config
from kiln.train.run import build_run


def build(preset: str, run_dir: Path, async_save: bool):
    cfg = load_config(None, {
        "model": {"preset": preset}, "data": {"seq_len": 128},
        "trainer": {"run_dir": str(run_dir), "steps": 10**6, "micro_batch_size": 2},
        "checkpoint": {"every": 0, "keep_last": 2, "save_final": False, "async_save": async_save},
        "eval": {"every": 0, "samples": 0}, "logging": {"progress": "lines"}, "watchdog": {"enabled": False}})
    run = build_run(cfg)
    return run.trainer, run.checkpointer


def timed_save(trainer, checkpointer) -> float:
    start = time.perf_counter()
    checkpointer.save(trainer)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="olmo2-20m")
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--steps-between", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-stall-") as tmp:
        runs = {mode: build(args.preset, Path(tmp) / mode, mode == "async") for mode in ("sync", "async")}
        stalls: dict[str, list[float]] = {"sync": [], "async": []}
        step_times: list[float] = []
        for _ in range(args.checkpoints):
            for mode, (trainer, checkpointer) in runs.items():
                for _ in range(args.steps_between):
                    start = time.perf_counter()
                    trainer.train_step([next(trainer.batches)])
                    step_times.append(time.perf_counter() - start)
                stalls[mode].append(timed_save(trainer, checkpointer))
        for mode, (_, checkpointer) in runs.items():
            start = time.perf_counter()
            checkpointer.finish_pending()
            stalls[mode][-1] += time.perf_counter() - start
        size = sum(p.stat().st_size for p in (Path(tmp) / "sync").rglob("*") if p.is_file()) / 2
    n_params = sum(p.numel() for p in runs["sync"][0].model.parameters())
    print(f"{args.preset}: {n_params / 1e6:.1f}M parameters, about {size / 2**20:.0f} MiB per checkpoint, "
          f"median training step {statistics.median(step_times):.2f}s")
    for mode, values in stalls.items():
        print(f"  {mode:5s} stall per checkpoint: median {statistics.median(values):.3f}s "
              f"(all: {', '.join(f'{v:.3f}' for v in values)})")
    print(f"  async / sync = {statistics.median(stalls['async']) / statistics.median(stalls['sync']):.2f}")


if __name__ == "__main__":
    main()
