"""Step time of the VLM recipe in fp32 and in bf16 autocast, alternating runs A B A B in one call.

Whether bf16 pays on a CPU depends on the CPU (AMX or AVX-512 BF16 units, or none), and the VLM's matrices are
small (width 128), so the CPU-wide figure `trainer.precision=auto` uses does not settle it: this times the recipe
itself. Each run is a fresh `kiln vlm train` of STEPS steps; the median `step_time` after the first few steps is
reported per precision, with the ratio and each run's last loss (bf16 must still learn).

    python benchmarks/bench_vlm_precision.py --data data/vlm-v4 [--pairs 2 --steps 25] [-- more overrides]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SKIP = 5  # the first steps warm caches and allocators


def run_once(data: str, precision: str, steps: int, extra: list[str], run_dir: Path) -> dict:
    """One short training run; its median step time and last loss from metrics.jsonl."""
    cmd = [sys.executable, "-m", "kiln", "vlm", "train", f"--data.paths=[{data}]", f"--trainer.precision={precision}",
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
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("extra", nargs="*", help="more `kiln vlm train` overrides, e.g. --model.n_layers=4")
    args = parser.parse_args()
    if args.steps <= SKIP:
        parser.error(f"--steps must be more than {SKIP}, got {args.steps}")
    results: dict[str, list[dict]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for pair in range(args.pairs):
            for precision in results:
                result = run_once(args.data, precision, args.steps, args.extra, Path(tmp) / f"{precision}-{pair}")
                results[precision].append(result)
                print(f"pair {pair + 1}/{args.pairs} {precision}: {result['step_s']:.3f} s/step, "
                      f"last loss {result['loss']:.3f}", flush=True)
    medians = {p: statistics.median(r["step_s"] for r in rs) for p, rs in results.items()}
    ratios = [f["step_s"] / b["step_s"] for f, b in zip(results["fp32"], results["bf16"], strict=True)]
    print(json.dumps({"fp32_step_s": medians["fp32"], "bf16_step_s": medians["bf16"],
                      "bf16_speedup_per_pair": ratios, "overrides": args.extra}))


if __name__ == "__main__":
    main()
