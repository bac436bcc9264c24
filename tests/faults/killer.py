"""Kill a command with SIGKILL at random moments, restarting it each time, until it finishes on its own.

For crash-safety tests: the command must resume from its own checkpoints. `kill_when(started)` (e.g. "a
.tmp-step* folder newer than `started`, the run's wall-clock start, exists") lets some kills land inside a
checkpoint write rather than wherever the clock says.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class KillReport:
    runs: int = 0
    kills: list[tuple[float, str]] = field(default_factory=list)  # (seconds into the run, "delay" or "when")

    @property
    def kills_during_trigger(self) -> int:
        return sum(why == "when" for _, why in self.kills)


def _wait_for_kill_moment(proc: subprocess.Popen, started: float, delay: float,
                          kill_when: Callable[[float], bool] | None, poll_s: float) -> str | None:
    """Poll until the process exits (None), the delay passes ("delay") or `kill_when(started)` holds ("when")."""
    deadline = time.monotonic() + delay
    while proc.poll() is None:
        if kill_when is not None and kill_when(started):
            return "when"
        if time.monotonic() >= deadline:
            return "delay"
        time.sleep(poll_s)
    return None


def run_until_success(cmd: Sequence[str], max_delay_s: float, min_delay_s: float = 0.0, max_kills: int = 20,
                      kill_when: Callable[[float], bool] | None = None, when_fraction: float = 0.5, seed: int = 0,
                      timeout_s: float = 300.0, poll_s: float = 0.002, cwd: Path | None = None,
                      env: dict[str, str] | None = None, log: Path | None = None) -> KillReport:
    """Start `cmd`; SIGKILL it after a random delay (or, in `when_fraction` of runs, as soon as
    `kill_when(started)` holds, however long that takes), restart, and repeat up to `max_kills` kills; then
    let it run to the end. A run may also finish before its kill moment, which ends it early. Returns what
    happened.

    A run that exits non-zero on its own is a real failure, raised as RuntimeError with its output (`log`).
    """
    rng, report, start = random.Random(seed), KillReport(), time.monotonic()
    with open(log, "ab") if log else contextlib.nullcontext(subprocess.DEVNULL) as out:
        while True:
            report.runs += 1
            started, run_start, why = time.time(), time.monotonic(), None
            proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out, stderr=out)
            if len(report.kills) < max_kills:
                left = timeout_s - (time.monotonic() - start)
                if kill_when is not None and rng.random() < when_fraction:
                    why = _wait_for_kill_moment(proc, started, left, kill_when, poll_s)
                else:
                    why = _wait_for_kill_moment(proc, started, min(rng.uniform(min_delay_s, max_delay_s), left),
                                                None, poll_s)
            if why is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                report.kills.append((time.monotonic() - run_start, why))
            elif (returncode := proc.wait(timeout=max(timeout_s - (time.monotonic() - start), 1))) == 0:
                return report
            else:
                detail = log.read_text()[-3000:] if log else "(pass log= to keep its output)"
                raise RuntimeError(f"{cmd} failed on its own with exit code {returncode}:\n{detail}")
            if time.monotonic() - start > timeout_s:
                raise TimeoutError(f"{cmd} did not finish within {timeout_s} s ({report.runs} runs)")
