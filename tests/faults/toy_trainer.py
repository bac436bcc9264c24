"""A stand-in trainer for kill -9 tests of the checkpoint protocol, without torch (starts in a blink).

    python toy_trainer.py RUN STEPS EVERY [STEP_SECONDS]

Its state is a float64 vector updated deterministically each step (plus a sleep of STEP_SECONDS, standing in
for compute); every EVERY steps it checkpoints the way kiln does (temp folder -> manifest -> rename). On start
it resumes from the newest checkpoint that verifies (with hashes) and appends what it loaded to
RUN/loads.jsonl, so a test can compare every load with an uninterrupted run. At the end it writes
RUN/final.npy atomically.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from kiln.faults.manifest import atomic_write_bytes, commit_checkpoint, newest_valid_checkpoint, sha256_file

SIZE = 1 << 15  # 256 KiB of float64


def initial_state() -> np.ndarray:
    return np.random.default_rng(0).standard_normal(SIZE)


def step_state(x: np.ndarray, step: int) -> np.ndarray:
    return np.tanh(x * 1.01 + 0.001 * step) + np.sin(x) * 0.1


def list_steps(run_dir: Path) -> list[Path]:
    return sorted((p for p in run_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                  key=lambda p: int(p.name[4:]))


def save(run_dir: Path, step: int, x: np.ndarray) -> None:
    tmp = run_dir / f".tmp-step{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "weights.npy", x)
    (tmp / "train_state.json").write_text(json.dumps({"step": step}))
    commit_checkpoint(tmp, run_dir / f"step{step:06d}")


def main(run_dir: Path, steps: int, every: int, step_seconds: float = 0.0) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    found = newest_valid_checkpoint(run_dir, list_steps, hashes=True, warn=lambda m: print(m, file=sys.stderr))
    x, start = initial_state(), 0
    if found is not None:
        x = np.load(found / "weights.npy")
        start = json.loads((found / "train_state.json").read_text())["step"]
        with open(run_dir / "loads.jsonl", "a") as f:
            f.write(json.dumps({"step": start, "sha256": sha256_file(found / "weights.npy")}) + "\n")
    for step in range(start + 1, steps + 1):
        x = step_state(x, step)
        time.sleep(step_seconds)
        if step % every == 0:
            save(run_dir, step, x)
    atomic_write_bytes(run_dir / "final.npy", x.tobytes())


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
