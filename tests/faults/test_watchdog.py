"""The watchdog on a fake clock: slow-step warnings with thread stacks, and the hard-timeout abort."""

from __future__ import annotations

import threading

import pytest

from kiln.faults.watchdog import EXIT_CODE_HUNG, Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_watchdog(clock: FakeClock, **kwargs) -> tuple[Watchdog, list[str], list[int]]:
    warnings: list[str] = []
    exits: list[int] = []
    args = dict(slow_factor=3.0, hard_timeout_s=100.0, min_history=3, clock=clock, exit_fn=exits.append,
                warn=warnings.append)
    return Watchdog(**(args | kwargs)), warnings, exits


def run_steps(wd: Watchdog, clock: FakeClock, durations: list[float]) -> None:
    for i, seconds in enumerate(durations, start=1):
        wd.on_step_start(i)
        clock.now += seconds
        wd.on_step_end()


def test_slow_step_warns_once_with_every_thread_stack():
    clock = FakeClock()
    wd, warnings, exits = make_watchdog(clock)
    run_steps(wd, clock, [1.0, 1.2, 0.8])
    helper = threading.Thread(target=threading.Event().wait, args=(5,), name="loader-worker", daemon=True)
    helper.start()
    wd.on_step_start(4)
    clock.now += 2.9
    wd.check()
    assert warnings == []
    clock.now += 0.2
    wd.check()
    wd.check()
    assert len(warnings) == 1 and not exits
    text = warnings[0]
    assert "step 4 has run for 3.1 s" in text and "median step time 1.000 s" in text
    assert 'Thread "MainThread"' in text and 'Thread "loader-worker"' in text
    assert "test_slow_step_warns_once_with_every_thread_stack" in text  # the main thread's actual frames


def test_hard_timeout_aborts_with_a_clear_message(capsys):
    clock = FakeClock()
    wd, _, exits = make_watchdog(clock)
    wd.on_step_start(7)
    clock.now += 100.5
    wd.check()
    wd.check()
    assert exits == [EXIT_CODE_HUNG]
    err = capsys.readouterr().err
    assert "step 7 has run for 100 s, past the hard timeout 100 s; aborting so the supervisor can restart" in err
    assert 'Thread "MainThread"' in err


def test_no_slow_warning_without_history_and_nothing_between_steps():
    clock = FakeClock()
    wd, warnings, exits = make_watchdog(clock)
    run_steps(wd, clock, [1.0])
    wd.on_step_start(2)
    clock.now += 50
    wd.check()
    wd.on_step_end()
    clock.now += 500  # between steps (e.g. after fit) nothing is watched
    wd.check()
    assert warnings == [] and exits == []


def test_state_dict_restores_history():
    clock = FakeClock()
    wd, _, _ = make_watchdog(clock)
    run_steps(wd, clock, [2.0, 2.0, 4.0])
    resumed, warnings, _ = make_watchdog(clock)
    resumed.load_state_dict(wd.state_dict())
    assert resumed.slow_threshold() == pytest.approx(6.0)
    resumed.on_step_start(4)
    clock.now += 6.5
    resumed.check()
    assert len(warnings) == 1


def test_background_thread_aborts_a_hung_step():
    aborted = threading.Event()
    codes: list[int] = []
    wd = Watchdog(hard_timeout_s=0.05, poll_s=0.01, exit_fn=lambda code: (codes.append(code), aborted.set()))
    wd.start()
    try:
        wd.on_step_start(1)
        assert aborted.wait(5)
    finally:
        wd.stop()
    assert codes == [EXIT_CODE_HUNG]


def test_rejects_meaningless_settings():
    with pytest.raises(ValueError, match="slow_factor > 1"):
        Watchdog(slow_factor=1.0)


def test_hung_process_exits_75_and_the_supervisor_restarts_it(tmp_path):
    """End to end with a real os._exit: the first run hangs in a step, the watchdog kills it, the second finishes."""
    import json
    import sys

    from kiln.faults.supervisor import RESTARTS_FILE, supervise

    script = tmp_path / "hangs_once.py"
    script.write_text(
        "import sys, time\nfrom pathlib import Path\nfrom kiln.faults.watchdog import Watchdog\n"
        "marker = Path(sys.argv[1])\nfirst = not marker.exists()\nmarker.write_text('')\n"
        "wd = Watchdog(hard_timeout_s=0.2, poll_s=0.02)\nwd.start()\nwd.on_step_start(1)\n"
        "time.sleep(30 if first else 0)\nwd.on_step_end()\nwd.stop()\n")
    rc = supervise([], tmp_path, 2, backoff_s=0.01, command=[sys.executable, str(script), str(tmp_path / "ran")])
    assert rc == 0
    (record,) = [json.loads(line) for line in (tmp_path / RESTARTS_FILE).read_text().splitlines()]
    assert record["exit_code"] == EXIT_CODE_HUNG and record["action"] == "restart"
    assert "past the hard timeout 0.2 s" in record["cause"][-1]


def test_callback_spares_a_resumed_process_its_compiling_first_step():
    """A resumed run knows its typical step time, but its first step compiles: only the second may warn."""
    from types import SimpleNamespace

    from kiln.train.callbacks import WatchdogCallback

    clock = FakeClock()
    history, _, _ = make_watchdog(clock)
    run_steps(history, clock, [1.0, 1.0, 1.0])
    callback = WatchdogCallback(SimpleNamespace(enabled=False, slow_factor=3.0, hard_timeout_s=100.0))
    callback.watchdog, warnings, exits = make_watchdog(clock)
    callback.load_state_dict(history.state_dict())
    trainer = SimpleNamespace(state=SimpleNamespace(step=3))
    callback.on_fit_start(trainer)
    for step, seconds in ((4, 40.0), (5, 4.0)):
        callback.on_step_start(trainer)
        clock.now += seconds
        callback.watchdog.check()
        trainer.state.step = step
        callback.on_step_end(trainer, {"step_time": seconds})
    assert len(warnings) == 1 and "step 5 has run for 4.0 s" in warnings[0] and not exits
