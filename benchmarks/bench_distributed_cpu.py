"""Training tokens/s on CPU: one process against two data-parallel processes (gloo), same per-rank micro-batch.

    python benchmarks/bench_distributed_cpu.py                 # the default tiny OLMo 2 on the built-in corpus
    python benchmarks/bench_distributed_cpu.py --steps 20 --micro-batch 8 --seq-len 256

Rows: one process on one thread, one process on all cores, and 2 processes x 1 thread under DDP and FSDP2, each
launched with torchrun. Two ranks double the global batch (weak scaling); tokens/s counts all ranks together.
On a 2-core machine the comparison to beat is one process using both cores, not one process on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from kiln.train.config import load_config

HERE = Path(__file__).resolve()
RESULT_PREFIX = "KILN_BENCH_RESULT "


def worker(args: argparse.Namespace) -> None:
    from dp_timing import time_training

    cfg = load_config(None, {"data": {"seq_len": args.seq_len}, "distributed": {"strategy": args.strategy},
                             "trainer": {"micro_batch_size": args.micro_batch, "threads": args.threads,
                                         "device": "cpu"}})
    result = time_training(cfg, args.steps, args.warmup)
    if result is not None:
        print(RESULT_PREFIX + json.dumps(result), flush=True)


def launch(nproc: int, threads: int, strategy: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", str(HERE), "--worker",
               f"--threads={threads}", f"--strategy={strategy}", f"--steps={args.steps}", f"--warmup={args.warmup}",
               f"--micro-batch={args.micro_batch}", f"--seq-len={args.seq_len}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if out.returncode or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(lines[0][len(RESULT_PREFIX):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from kiln.data.prepare import builtin_dataset

    builtin_dataset(progress=False)  # prepared once here, not raced by the ranks
    cores = os.cpu_count() or 1
    rows = [("1 process x 1 thread", 1, 1, "none"), (f"1 process x {cores} threads", 1, cores, "none"),
            ("2 processes x 1 thread, DDP", 2, 1, "ddp"), ("2 processes x 1 thread, FSDP2", 2, 1, "fsdp")]
    print(f"olmo2-tiny, seq_len {args.seq_len}, micro-batch {args.micro_batch} per rank, median of {args.steps} "
          f"steps after {args.warmup} warm-up, {cores} CPU cores")
    for label, nproc, threads, strategy in rows:
        result = launch(nproc, threads, strategy, args)
        print(f"  {label:<32} {result['tokens_per_s']:>9,.0f} tokens/s  ({result['step_s'] * 1000:.0f} ms/step)",
              flush=True)


if __name__ == "__main__":
    main()
