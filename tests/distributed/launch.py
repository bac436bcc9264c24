"""The one helper that starts distributed test processes: N local ranks on gloo, as torchrun would set them up.

Each rank is a plain subprocess with torchrun's environment variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) and no
supervisor that kills the others when one fails, so a test sees whether the ranks end by themselves.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kiln.distributed.setup import free_port

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RankResult:
    rank: int
    returncode: int
    output: str


def run_ranks(target: str, kwargs: dict, world_size: int = 2, timeout_s: float = 120.0,
              check: bool = True) -> tuple[list[RankResult], float]:
    """Run `target` ("module:function") with `kwargs` on `world_size` ranks; (results, wall seconds).

    With `check`, any rank exiting non-zero fails with every rank's output; ranks still running after `timeout_s`
    are killed and reported as hung either way.
    """
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
               "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.distributed.launch", target, json.dumps(kwargs)],
                                      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    start = time.monotonic()
    hung = []
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            hung.append(procs.index(proc))
    wall = time.monotonic() - start
    results = [RankResult(r, p.wait(), p.stdout.read()) for r, p in enumerate(procs)]
    if hung or (check and any(r.returncode for r in results)):
        outputs = "\n".join(f"--- rank {r.rank} (exit {r.returncode}) ---\n{r.output}" for r in results)
        problem = f"ranks {hung} hung past {timeout_s} s" if hung else "a rank failed"
        raise AssertionError(f"{problem}\n{outputs}")
    return results, wall


def _main(target: str, kwargs_json: str) -> None:
    module, function = target.split(":")
    getattr(importlib.import_module(module), function)(**json.loads(kwargs_json))


if __name__ == "__main__":
    _main(*sys.argv[1:])
