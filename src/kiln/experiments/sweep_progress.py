"""What a running `kiln sweep` shows: which variation runs, where its log is, and how far it has come.

The parent reads the last line of each child's metrics.jsonl, only the end of the file, so polling stays cheap.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from kiln.experiments.jobs import Job, Outcome
from kiln.train.metrics_log import METRICS_FILE

LOG_FILE = "train.log"


def _last_log_line(run_dir: Path) -> str:
    lines = [line for line in (run_dir / LOG_FILE).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _step_of_last_record(lines: list[bytes]) -> int | None:
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a line torn mid-write
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            return int(record["step"])
    return None


def last_step(run_dir: Path, tail_bytes: int = 1 << 16) -> int | None:
    """The step of the last whole line of RUN/metrics.jsonl, or None before the first.

    Only the file's end is read (more when a line is longer), so polling a long run stays cheap.
    """
    try:
        with (run_dir / METRICS_FILE).open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            while True:
                f.seek(max(0, size - tail_bytes))
                step = _step_of_last_record(f.read().splitlines()[1 if size > tail_bytes else 0:])  # 1st: mid-line
                if step is not None or tail_bytes >= size:
                    return step
                tail_bytes *= 2
    except OSError:
        return None


class SweepProgress:
    """What a running sweep shows: a line when a variation starts (naming its train.log) and ends, and its step.

    On a terminal the steps go on one tqdm bar over the whole sweep; elsewhere (CI, a pipe) as a plain line per
    running variation, at most one per `every` seconds and only when its step moved, so a log never floods.
    Workers call `started`/`finished` from their threads, the main thread calls `poll`; a lock keeps lines whole.
    """

    def __init__(self, jobs: list[Job], bar: bool, every: float) -> None:
        from tqdm import tqdm

        self.jobs, self.every, self.lock = jobs, every, threading.Lock()
        self.shown: dict[int, int | None] = {}  # running job index -> the step last shown
        self.finished_count, self.finished_steps = 0, 0
        self.bar = tqdm(total=sum(j.steps for j in jobs), unit="step", dynamic_ncols=True, leave=False) if bar else None

    def _tag(self, index: int) -> str:
        return f"[{index + 1}/{len(self.jobs)}] {self.jobs[index].variation.name}"

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def started(self, index: int) -> None:
        with self.lock:
            self.shown[index] = None
            self._write(f"{self._tag(index)}: started; log in {self.jobs[index].run_dir / LOG_FILE}")

    def finished(self, index: int, outcome: Outcome) -> None:
        with self.lock:
            del self.shown[index]
            self.finished_count += 1
            self.finished_steps += self.jobs[index].steps
            count = f"{self.finished_count} of {len(self.jobs)} finished"
            if outcome.status == "ok":
                self._write(f"{self._tag(index)}: ok in {outcome.seconds:.0f} s ({count})")
            else:
                self._write(f"{self._tag(index)}: failed with exit code {outcome.exit_code} "
                            f"({_last_log_line(outcome.run_dir)}); see {outcome.run_dir / LOG_FILE} ({count})")

    def poll(self) -> None:
        """Show each running variation's last logged step."""
        with self.lock:
            steps = {i: last_step(self.jobs[i].run_dir) for i in self.shown}
            progress = {i: f"{self._tag(i)}: step {step}/{self.jobs[i].steps}" for i, step in steps.items()
                        if step is not None}
            if self.bar is not None:
                self.bar.n = self.finished_steps + sum(step or 0 for step in steps.values())
                self.bar.set_description_str(" | ".join(progress.values()), refresh=False)
                self.bar.refresh()
                return
            for i, text in progress.items():
                if steps[i] != self.shown[i]:
                    self.shown[i] = steps[i]
                    self._write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
