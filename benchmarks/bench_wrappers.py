"""Activation checkpointing and compilation modes: step time, first-step (cold compile) time and peak memory.

Each mode runs in a fresh process (peak RSS cannot be told apart within one) through `build_run`, as `kiln train`
builds a run, on the built-in corpus: one first step (timed: it holds compilation when compiling), then the
median of `--steps` steps. The modes run in turn for `--rounds` rounds, in reversed order every other round, and
each figure is the median over rounds, so drifts in machine speed hit every mode alike.

    python benchmarks/bench_wrappers.py [--rounds 2] [--steps 4] [--modes none ac ac2 ...] [-- overrides]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

MODES: dict[str, list[str]] = {
    "none": [],
    "ac": ["--trainer.activation_checkpointing=true"],
    "ac2": ["--trainer.activation_checkpointing=true", "--trainer.ac_every=2"],
    "ac4": ["--trainer.activation_checkpointing=true", "--trainer.ac_every=4"],
    "compile": ["--trainer.compile=true"],
    "compile+budget0.5": ["--trainer.compile=true", "--trainer.ac_budget=0.5"],
    "compile+budget0": ["--trainer.compile=true", "--trainer.ac_budget=0"],
}
SHAPE = ["--model.preset=olmo2-20m", "--data.seq_len=1024", "--trainer.micro_batch_size=4"]


def measure(overrides: list[str], steps: int) -> dict[str, float]:
    """In this process: the first step's seconds, the median of the next `steps`, and the peak RSS in MiB."""
    from benchmarks.bench_loss_chunk import vm_hwm_kib

    from kiln.train.config import load_config
    from kiln.train.run import build_run

    with tempfile.TemporaryDirectory(prefix="kiln-bench-wrappers-") as tmp:
        cfg = load_config(None, [*overrides, f"--trainer.run_dir={tmp}", "--trainer.steps=1000000",
                                 "--eval.every=0", "--eval.samples=0", "--checkpoint.every=0",
                                 "--checkpoint.save_final=false", "--logging.progress=lines"])
        trainer = build_run(cfg).trainer
        times = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            trainer.train_step([next(trainer.batches) for _ in range(cfg.trainer.grad_accum)])
            times.append(time.perf_counter() - start)
    return {"first_s": times[0], "step_s": statistics.median(times[1:]), "peak_mib": vm_hwm_kib() / 1024,
            "tokens": cfg.tokens_per_step}


def run_mode(overrides: list[str], steps: int) -> dict[str, float]:
    code = f"import benchmarks.bench_wrappers as b, json; print(json.dumps(b.measure({overrides!r}, {steps})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{overrides} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("overrides", nargs="*", help="config overrides for every mode (default: a 20M model)")
    args = parser.parse_args()
    shape = args.overrides or SHAPE
    print(f"shape: {' '.join(shape)}; {args.steps} timed steps after the first, median of {args.rounds} rounds")
    results: dict[str, list[dict]] = {m: [] for m in args.modes}
    for r in range(args.rounds):
        for mode in args.modes if r % 2 == 0 else reversed(args.modes):
            results[mode].append(run_mode([*shape, *MODES[mode]], args.steps))
            print(f"# round {r + 1} {mode}: {results[mode][-1]}", file=sys.stderr, flush=True)
    base = statistics.median(x["step_s"] for x in results[args.modes[0]])
    base_mem = statistics.median(x["peak_mib"] for x in results[args.modes[0]])
    print(f"| mode | first step s | step s | tokens/s | vs {args.modes[0]} | peak MiB | vs {args.modes[0]} |")
    print("|---|---|---|---|---|---|---|")
    for mode, runs in results.items():
        step = statistics.median(x["step_s"] for x in runs)
        first = statistics.median(x["first_s"] for x in runs)
        mem = statistics.median(x["peak_mib"] for x in runs)
        print(f"| {mode} | {first:.1f} | {step:.2f} | {runs[0]['tokens'] / step:,.0f} | {base / step:.2f}x "
              f"| {mem:,.0f} | {mem / base_mem:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
