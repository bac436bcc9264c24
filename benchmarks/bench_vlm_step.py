"""Step time of the VLM recipe under a few settings (fp32, bf16 autocast, torch.compile), alternating runs in one
call: A B A B ...

Whether bf16 or compile pays on a CPU depends on the CPU (AMX or AVX-512 BF16 units, or none) and on the VLM's
small matrices (width 128), so the CPU-wide figure `trainer.precision=auto` uses does not settle it: this times the
recipe itself. Each run is a fresh `kiln vlm train` of STEPS steps; the median `step_time` after the first few
steps (compilation happens in the first) is reported per setting, with each run's last loss (a faster setting must
still learn) and the speed-up over the first setting, pair by pair.

    python benchmarks/bench_vlm_step.py --data data/vlm-v4 [--variants fp32 bf16 compile] [--pairs 2 --steps 25]
        [-- more overrides]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 5  # the first steps warm caches and allocators, and compile
VARIANTS = {"fp32": [], "bf16": ["--trainer.precision=bf16"], "compile": ["--trainer.compile=true"],
            "bf16-compile": ["--trainer.precision=bf16", "--trainer.compile=true"]}


def run_once(data: str, variant: str, steps: int, extra: list[str], run_dir: Path) -> dict:
    """One short training run; its median step time and last loss from metrics.jsonl."""
    cmd = [sys.executable, "-m", "kiln", "vlm", "train", f"--data.paths=[{data}]", *VARIANTS[variant],
           f"--trainer.steps={steps}", "--eval.every=100000", "--checkpoint.every=100000",
           "--checkpoint.save_final=false", "--schedule.warmup=5", f"--trainer.run_dir={run_dir}",
           "--logging.progress=lines", *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    return {"step_s": statistics.median(r["step_time"] for r in rows[SKIP:]), "loss": rows[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder written by kiln vlm data")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=["fp32", "bf16"],
                        help="settings to compare; speed-ups are against the first (default: fp32 bf16)")
    parser.add_argument("--pairs", type=int, default=2, help="rounds of one run per setting")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("extra", nargs="*", help="more `kiln vlm train` overrides, e.g. --model.n_layers=4")
    args = parser.parse_args()
    if args.steps <= SKIP:
        parser.error(f"--steps must be more than {SKIP}, got {args.steps}")
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for variant in results:
                result = run_once(args.data, variant, args.steps, args.extra, Path(tmp) / f"{variant}-{pair}")
                results[variant].append(result)
                print(f"round {pair + 1}/{args.pairs} {variant}: {result['step_s']:.3f} s/step, "
                      f"last loss {result['loss']:.3f}", flush=True)
    base = results[args.variants[0]]
    print(json.dumps({v: {"step_s": statistics.median(r["step_s"] for r in rs),
                          "speedup_per_pair": [b["step_s"] / r["step_s"] for b, r in zip(base, rs, strict=True)]}
                      for v, rs in results.items()} | {"overrides": args.extra}))


if __name__ == "__main__":
    main()
