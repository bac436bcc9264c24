"""`kiln train --max-restarts N`: rerun a crashed training process, which resumes from its last checkpoint.

The child is `python -m kiln train ARGS` (without the supervisor's own flags). A non-zero exit or a fatal signal
restarts it after an exponential back-off (`backoff_s`, doubled each restart, at most `backoff_max_s`), up to
`max_restarts` times. It is not restarted after success, after exit code 2 (a user error: a bad config or a
missing file does not fix itself), or after the supervisor itself was asked to stop (SIGINT/SIGTERM, which it
forwards to the child; a second one kills the child). Every abnormal exit is one JSON line in RUN/restarts.jsonl
with its time, attempt, exit code or signal, runtime, action taken and the child's last stderr lines as cause.
The watchdog's hung-step exit (75, `kiln.faults.watchdog.EXIT_CODE_HUNG`) is restarted like any crash.
Restarts are counted over the whole run, not per failure streak. The child sees its restart number in the
KILN_RESTART environment variable, and on Linux it is killed if the supervisor dies, so a second supervisor
started on the same run folder never races an orphaned trainer.

Multi-process runs: use torchrun's elastic agent instead, which restarts the whole group when any rank fails:

    torchrun --nproc-per-node 8 --max-restarts 3 -m kiln train recipe.yaml

(with `--rdzv-backend c10d --rdzv-endpoint HOST:PORT --nnodes N` across nodes). Each restarted rank resumes from
the newest checkpoint that verifies, exactly as here; torchrun does not write restarts.jsonl, its log has them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kiln.errors import KilnError

EXIT_USER_ERROR = 2
RESTARTS_FILE = "restarts.jsonl"
SUPERVISOR_FLAGS = ("--max-restarts", "--restart-backoff")
_TAIL_BYTES = 16384


def strip_supervisor_flags(argv: Sequence[str]) -> list[str]:
    """`argv` without `--max-restarts N` / `--restart-backoff S` (either spelling, with `=` or a separate value)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in SUPERVISOR_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in SUPERVISOR_FLAGS)):
            out.append(arg)
    return out


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGKILL it when the supervisor dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def describe_exit(returncode: int) -> tuple[int | None, str | None]:
    """(exit code, signal name): a negative Popen return code means the child died of that signal."""
    if returncode < 0:
        try:
            return None, signal.Signals(-returncode).name
        except ValueError:
            return None, f"signal {-returncode}"
    return returncode, None


class _StderrTee:
    """Copies the child's stderr through to ours as it comes and keeps the last bytes for the restart record."""

    def __init__(self, pipe) -> None:
        self.pipe, self.tail = pipe, bytearray()
        self.thread = threading.Thread(target=self._pump, name="kiln-stderr-tee", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        out = getattr(sys.stderr, "buffer", None)
        while chunk := os.read(self.pipe.fileno(), 65536):
            if out is not None:
                out.write(chunk)
                out.flush()
            else:
                sys.stderr.write(chunk.decode(errors="replace"))
            self.tail += chunk
            del self.tail[:-_TAIL_BYTES]

    def last_lines(self, n: int) -> list[str]:
        self.thread.join()
        lines = self.tail.decode(errors="replace").replace("\r", "\n").splitlines()
        return [line for line in lines if line.strip()][-n:]


class Supervisor:
    """One supervised run; `run()` returns the exit code to report."""

    def __init__(self, command: list[str], run_dir: Path, max_restarts: int, backoff_s: float,
                 backoff_max_s: float, tail_lines: int = 20) -> None:
        self.command, self.run_dir, self.max_restarts = command, run_dir, max_restarts
        self.backoff_s, self.backoff_max_s, self.tail_lines = backoff_s, backoff_max_s, tail_lines
        self.stop_requested = threading.Event()
        self.stop_signal = signal.SIGTERM
        self.child: subprocess.Popen | None = None

    def run(self) -> int:
        restarts = 0
        while not self.stop_requested.is_set():
            started = time.monotonic()
            returncode, cause = self._run_child(restarts)
            if returncode == 0:
                return 0
            code, sig = describe_exit(returncode)
            action = self._decide(code, restarts)
            delay = min(self.backoff_s * 2**restarts, self.backoff_max_s) if action == "restart" else 0.0
            self._record(restarts + 1, code, sig, time.monotonic() - started, action, delay, cause)
            what = f"exit code {code}" if sig is None else sig
            print(f"kiln supervisor: training ended with {what}; {action}"
                  + (f" {restarts + 1}/{self.max_restarts} in {delay:g} s" if action == "restart" else ""),
                  file=sys.stderr, flush=True)
            if action != "restart":
                return code if code is not None else 128 + -returncode
            self.stop_requested.wait(delay)
            restarts += 1
        return 128 + self.stop_signal

    def _decide(self, code: int | None, restarts: int) -> str:
        if self.stop_requested.is_set():
            return "stop (asked to)"
        if code == EXIT_USER_ERROR:
            return "stop (user error, a restart would fail the same way)"
        if restarts >= self.max_restarts:
            return f"give up (all {self.max_restarts} restarts used)"
        return "restart"

    def _run_child(self, restarts: int) -> tuple[int, list[str]]:
        # A session of its own: a Ctrl-C in the terminal reaches only us, and we forward it once.
        env = dict(os.environ, KILN_RESTART=str(restarts))
        self.child = subprocess.Popen(self.command, stderr=subprocess.PIPE, env=env, start_new_session=True,
                                      preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        tee = _StderrTee(self.child.stderr)
        returncode = self.child.wait()
        cause = tee.last_lines(self.tail_lines)
        self.child.stderr.close()
        return returncode, cause

    def forward(self, signum: int, frame=None) -> None:
        """First SIGINT/SIGTERM: pass it to the child and stop after it exits; a second one kills the child."""
        child = self.child
        again = self.stop_requested.is_set()
        self.stop_signal = signal.Signals(signum)
        self.stop_requested.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGKILL if again else signum)

    def _record(self, attempt: int, code: int | None, sig: str | None, runtime_s: float, action: str,
                backoff_s: float, cause: list[str]) -> None:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "attempt": attempt, "exit_code": code, "signal": sig,
                 "runtime_s": round(runtime_s, 3), "action": action, "backoff_s": backoff_s, "cause": cause}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / RESTARTS_FILE, "a") as f:
            f.write(json.dumps(entry) + "\n")


def supervise(argv: list[str], run_dir: Path, max_restarts: int, backoff_s: float = 5, backoff_max_s: float = 300,
              command: list[str] | None = None) -> int:
    """Run `command + argv` (default `python -m kiln train`), restarting it on crashes; return its final exit code.

    `argv` may still hold the supervisor's own flags; they are removed. `command` is injectable for tests.
    """
    if max_restarts < 0 or backoff_s < 0:
        raise KilnError(f"--max-restarts and --restart-backoff must be >= 0, got {max_restarts} and {backoff_s}")
    base = command if command is not None else [sys.executable, "-m", "kiln", "train"]
    sup = Supervisor(base + strip_supervisor_flags(argv), Path(run_dir), max_restarts, backoff_s, backoff_max_s)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, sup.forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
    try:
        return sup.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
