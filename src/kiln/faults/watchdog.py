"""A watchdog thread for hung or crawling training steps.

A step slower than `slow_factor` x the median of recent steps logs a warning with the stack of every thread
(where is it stuck: a collective, the data loader, a filesystem call?). A step past `hard_timeout_s` prints a
clear message and ends the process with EXIT_CODE_HUNG, because a hung NCCL collective or dead file system
cannot be interrupted from Python; the supervisor (`kiln train --max-restarts`, or torchrun's) then restarts
it from the last checkpoint.

Wiring: call `on_step_start(step)` before a step's first micro-batch and `on_step_end(step_time)` after it
(including callbacks such as checkpoint saves if they should be watched too); `start()` once, `stop()` at the end.
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

# EX_TEMPFAIL from sysexits.h ("temporary failure; try again"): the supervisor restarts on it.
EXIT_CODE_HUNG = 75

log = logging.getLogger("kiln.faults")


def thread_stacks() -> str:
    """The current stack of every Python thread, named, innermost call last."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f'Thread "{names.get(ident, "?")}" ({ident}):\n{"".join(traceback.format_stack(frame))}')
    return "\n".join(parts)


class Watchdog:
    """Warns on slow steps with all thread stacks; aborts the process on a step past the hard timeout.

    `clock` and `exit_fn` are injectable so tests can drive it with a fake clock and without dying.
    """

    def __init__(self, slow_factor: float = 5.0, hard_timeout_s: float = 1800.0, min_history: int = 5,
                 history: int = 100, poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 exit_fn: Callable[[int], Any] = os._exit, warn: Callable[[str], None] = log.warning) -> None:
        if slow_factor <= 1 or hard_timeout_s <= 0:
            raise ValueError(f"need slow_factor > 1 and hard_timeout_s > 0, got {slow_factor}, {hard_timeout_s}")
        self.slow_factor, self.hard_timeout_s, self.min_history = slow_factor, hard_timeout_s, min_history
        self.poll_s, self.clock, self.exit_fn, self.warn = poll_s, clock, exit_fn, warn
        self.step_times: deque[float] = deque(maxlen=history)
        self.step: int | None = None
        self.started_at: float | None = None
        self.warned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_step_start(self, step: int | None = None, warn_slow: bool = True) -> None:
        """Start watching; `warn_slow=False` watches only for the hard timeout (for work of no typical length)."""
        with self._lock:
            self.step, self.started_at, self.warned = step, self.clock(), not warn_slow

    def on_step_end(self, step_time: float | None = None) -> None:
        """Record the step's duration (measured by the watchdog's clock unless given) and stop watching it."""
        with self._lock:
            if step_time is None and self.started_at is not None:
                step_time = self.clock() - self.started_at
            if step_time is not None:
                self.step_times.append(step_time)
            self.started_at = None

    def slow_threshold(self) -> float | None:
        """Seconds after which the running step counts as slow; None until `min_history` steps were seen."""
        if len(self.step_times) < self.min_history:
            return None
        return self.slow_factor * statistics.median(self.step_times)

    def check(self) -> None:
        """One look at the running step; the thread calls this every `poll_s` seconds."""
        with self._lock:
            if self.started_at is None:
                return
            elapsed, step = self.clock() - self.started_at, self.step
            threshold = self.slow_threshold()
            warn_now = threshold is not None and elapsed > threshold and not self.warned
            self.warned |= warn_now
        name = f"step {step}" if step is not None else "the current step"
        if elapsed > self.hard_timeout_s:
            # the message comes last, so it ends the stderr tail that the supervisor records as the cause
            print(f"kiln watchdog: stacks of all threads of the hung process:\n{thread_stacks()}\n"
                  f"kiln watchdog: {name} has run for {elapsed:.0f} s, past the hard timeout {self.hard_timeout_s:g} "
                  f"s; aborting so the supervisor can restart it (exit code {EXIT_CODE_HUNG})",
                  file=sys.stderr, flush=True)
            self.exit_fn(EXIT_CODE_HUNG)
            with self._lock:
                self.started_at = None  # reached only when exit_fn returns (tests): abort once per step
        elif warn_now:
            self.warn(f"kiln watchdog: {name} has run for {elapsed:.1f} s, over {self.slow_factor:g} x the median "
                      f"step time {threshold / self.slow_factor:.3f} s. Stacks of all threads:\n{thread_stacks()}")

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="kiln-watchdog", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def state_dict(self) -> dict[str, Any]:
        """The recent step times, so a resumed run knows what "slow" means from its first step."""
        return {"step_times": list(self.step_times)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_times.clear()
        self.step_times.extend(float(t) for t in state["step_times"])
