"""The supervisor against tiny fake training commands (the real trainer is not needed to test restarts)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from kiln.faults.supervisor import RESTARTS_FILE, strip_supervisor_flags, supervise

FAKE_TRAINER = """
import json, os, signal, sys, time
from pathlib import Path
state = Path(sys.argv[1])
runs = int(state.read_text()) + 1 if state.exists() else 1
state.write_text(str(runs))
Path(str(state) + ".argv").write_text(json.dumps(sys.argv[2:]))
plan = sys.argv[2].split(",")  # what run i does: ok, fail, user, kill, hang
action = plan[min(runs, len(plan)) - 1]
print(f"run {runs}: {action} (restart {os.environ['KILN_RESTART']})", file=sys.stderr, flush=True)
if action == "fail":
    print("RuntimeError: boom", file=sys.stderr)
    sys.exit(3)
if action == "user":
    print("kiln train: error: bad recipe", file=sys.stderr)
    sys.exit(2)
if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if action == "hang":
    Path(str(state) + ".started").write_text("")
    time.sleep(60)
"""


@pytest.fixture
def fake(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "fake_trainer.py"
    script.write_text(textwrap.dedent(FAKE_TRAINER))
    state = tmp_path / "runs"
    return [sys.executable, str(script), str(state)], state


def records(run_dir: Path) -> list[dict]:
    path = run_dir / RESTARTS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_restarts_until_success_and_records_each_restart(tmp_path, fake):
    command, state = fake
    rc = supervise(["fail,kill,ok", "--max-restarts", "5", "--restart-backoff=0.01"], tmp_path / "run", 5,
                   backoff_s=0.01, command=command)
    assert rc == 0 and state.read_text() == "3"
    assert json.loads(Path(f"{state}.argv").read_text()) == ["fail,kill,ok"]
    first, second = records(tmp_path / "run")
    assert (first["attempt"], first["exit_code"], first["signal"], first["action"]) == (1, 3, None, "restart")
    assert "RuntimeError: boom" in first["cause"] and "run 1: fail (restart 0)" in first["cause"]
    assert (second["attempt"], second["exit_code"], second["signal"]) == (2, None, "SIGKILL")
    assert [first["backoff_s"], second["backoff_s"]] == [0.01, 0.02]


def test_gives_up_after_max_restarts(tmp_path, fake):
    command, state = fake
    rc = supervise(["fail"], tmp_path, 2, backoff_s=0.01, command=command)
    assert rc == 3 and state.read_text() == "3"
    assert [r["action"] for r in records(tmp_path)] == ["restart", "restart", "give up (all 2 restarts used)"]


def test_user_error_is_not_restarted(tmp_path, fake):
    command, state = fake
    assert supervise(["user"], tmp_path, 5, backoff_s=0.01, command=command) == 2
    assert state.read_text() == "1"
    (only,) = records(tmp_path)
    assert only["exit_code"] == 2 and only["action"].startswith("stop (user error")
    assert "kiln train: error: bad recipe" in only["cause"]


def test_success_writes_no_record(tmp_path, fake):
    command, _ = fake
    assert supervise(["ok"], tmp_path, 3, command=command) == 0
    assert not (tmp_path / RESTARTS_FILE).exists()


def test_sigterm_is_forwarded_and_stops_restarts(tmp_path, fake):
    command, state = fake
    started = Path(f"{state}.started")

    def terminate_us_once_the_child_runs() -> None:
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=terminate_us_once_the_child_runs, daemon=True).start()
    start = time.monotonic()
    rc = supervise(["hang"], tmp_path, 5, backoff_s=0.01, command=command)
    assert rc == 128 + signal.SIGTERM and time.monotonic() - start < 20
    assert state.read_text() == "1"
    (only,) = records(tmp_path)
    assert only["signal"] == "SIGTERM" and only["action"] == "stop (asked to)"
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_strip_supervisor_flags():
    argv = ["r.yaml", "--max-restarts", "3", "--optim.lr=1e-3", "--restart-backoff=2", "--resume"]
    assert strip_supervisor_flags(argv) == ["r.yaml", "--optim.lr=1e-3", "--resume"]


def test_kiln_train_routes_max_restarts_to_the_supervisor(tmp_path, monkeypatch):
    from kiln import cli
    from kiln.faults import supervisor

    calls = []
    monkeypatch.setattr(supervisor, "supervise", lambda *args, **kwargs: calls.append((args, kwargs)) or 0)
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--max-restarts", "4", "--restart-backoff", "0.5", f"--trainer.run_dir={run_dir}"]) == 0
    (args, kwargs), = calls
    assert args == ([f"--trainer.run_dir={run_dir}"], run_dir, 4) and kwargs == {"backoff_s": 0.5}
