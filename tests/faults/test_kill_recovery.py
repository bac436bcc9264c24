"""kill -9 at random moments, inside checkpoint writes too: the run still ends bitwise-identical to an
uninterrupted one, and every checkpoint it resumed from was complete (equal to the uninterrupted state)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from tests.faults import toy_trainer
from tests.faults.killer import run_until_success

STEPS, EVERY, STEP_SECONDS = 200, 5, 0.005


def writing_a_later_checkpoint(run_dir: Path, started: float) -> bool:
    """This run is writing a checkpoint at least two past its resume point: the kill lands inside a write,
    and the run still completed one checkpoint first, so the test always makes progress. (Temp folders
    older than the run are left over from killed runs.)"""
    lines = (run_dir / "loads.jsonl").read_text().splitlines() if (run_dir / "loads.jsonl").exists() else []
    resumed = json.loads(lines[-1])["step"] if lines and lines[-1].endswith("}") else 0
    for tmp in run_dir.glob(".tmp-step*"):
        try:
            if int(tmp.name[len(".tmp-step"):]) >= resumed + 2 * EVERY and tmp.stat().st_mtime >= started:
                return True
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return False


def test_random_kills_leave_a_bitwise_identical_result(tmp_path):
    run_dir, reference_dir = tmp_path / "run", tmp_path / "reference"
    toy_trainer.main(reference_dir, STEPS, EVERY)
    expected = {int(p.name[4:]): hashlib.sha256((p / "weights.npy").read_bytes()).hexdigest()
                for p in toy_trainer.list_steps(reference_dir)}

    command = [sys.executable, toy_trainer.__file__, str(run_dir), str(STEPS), str(EVERY), str(STEP_SECONDS)]
    report = run_until_success(command, min_delay_s=0.1, max_delay_s=0.6, max_kills=10, seed=1,
                               kill_when=lambda started: writing_a_later_checkpoint(run_dir, started),
                               log=tmp_path / "log.txt")
    assert len(report.kills) >= 6 and report.kills_during_trigger >= 2, report
    assert (run_dir / "final.npy").read_bytes() == (reference_dir / "final.npy").read_bytes()
    loads = [json.loads(line) for line in (run_dir / "loads.jsonl").read_text().splitlines()]
    assert len(loads) >= 3, f"too few resumptions to test anything: {loads}"
    for load in loads:
        assert load["sha256"] == expected[load["step"]], f"resumed from an incomplete checkpoint: {load}"
