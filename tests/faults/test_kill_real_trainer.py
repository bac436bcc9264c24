"""kill -9 the real `kiln train` at random moments, inside checkpoint writes too, restarting it each time:
the final weights are bitwise-identical to an uninterrupted run, every checkpoint left behind (each one a
possible resume point) equals the uninterrupted run's checkpoint of the same step, and metrics.jsonl has exactly
one line for every step."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from kiln.train.checkpointing import list_checkpoints
from kiln.train.run import train
from tests.faults.killer import run_until_success
from tests.train.conftest import tiny_config

STEPS, EVERY = 80, 2


def _config(dataset: Path, run_dir: Path):
    return tiny_config(dataset, run_dir, trainer={"steps": STEPS}, checkpoint={"every": EVERY, "keep_last": 100},
                       eval={"every": 0, "samples": 0}, stability={"layer_stats_every": 5})


def writing_past_resume_point(run_dir: Path, started: float) -> bool:
    """A checkpoint write of this run is under way, at least two checkpoints past where it resumed."""
    resumed = max((int(p.name[4:]) for p in list_checkpoints(run_dir) if p.stat().st_mtime < started), default=0)
    for tmp in run_dir.glob(".tmp-step*"):
        try:
            if int(tmp.name[len(".tmp-step"):]) >= resumed + 2 * EVERY and tmp.stat().st_mtime >= started:
                return True
        except (FileNotFoundError, ValueError):
            pass
    return False


@pytest.mark.slow
def test_random_kills_of_kiln_train_end_bitwise_identical(tiny_dataset, tmp_path):
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    train(_config(tiny_dataset, reference))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_config(tiny_dataset, run_dir).to_dict()))
    log = tmp_path / "train.log"
    start = time.monotonic()
    report = run_until_success([sys.executable, "-m", "kiln", "train", str(recipe)], min_delay_s=2.0,
                               max_delay_s=6.0, max_kills=8, seed=3, log=log, timeout_s=400,
                               kill_when=lambda started: writing_past_resume_point(run_dir, started))
    assert len(report.kills) >= 4 and report.kills_during_trigger >= 1, report
    resumed = re.findall(r"resumed from \S+step(\d+) at step", log.read_text())
    assert resumed, "no run ever resumed"
    steps = {int(p.name[4:]) for p in list_checkpoints(run_dir)}
    assert steps == set(range(EVERY, STEPS + 1, EVERY))
    for step in sorted(steps):
        assert (run_dir / f"step{step:06d}/model.safetensors").read_bytes() == (
            reference / f"step{step:06d}/model.safetensors").read_bytes(), step
    logged = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1)), "every step has exactly one metrics line after the kills"
    assert not list(run_dir.glob(".tmp-step*")) or all(
        not (p / "MANIFEST.json").exists() for p in run_dir.glob(".tmp-step*"))
    print(f"{report.runs} runs, {len(report.kills)} kills ({report.kills_during_trigger} in checkpoint writes), "
          f"resumed at steps {resumed}, {time.monotonic() - start:.0f}s")
