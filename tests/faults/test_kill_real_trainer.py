"""kill -9 the real `kiln train` at random moments, inside checkpoint writes too, restarting it each time:
the final weights are bitwise-identical to an uninterrupted run, every checkpoint left behind (each one a
possible resume point) equals the uninterrupted run's checkpoint of the same step, and metrics.jsonl has exactly
one line for every step."""

from __future__ import annotations

import json
import random
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


def resume_point(run_dir: Path, started: float) -> int:
    """The step a run started at `started` resumed from: its newest checkpoint older than the start."""
    return max((int(p.name[4:]) for p in list_checkpoints(run_dir) if p.stat().st_mtime < started), default=0)


def last_logged_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    except (FileNotFoundError, IndexError, ValueError, KeyError):
        return 0  # no line yet, or one being written


class KillMoments:
    """For each run, one of two kill moments drawn at random: inside a checkpoint write at least two checkpoints
    past where it resumed, or once it has trained 1-12 steps past its resume point. Both are counted in steps, not
    seconds, so a quiet machine (where a run is quick) gets as many kills as a loaded one."""

    def __init__(self, run_dir: Path, seed: int) -> None:
        self.run_dir, self.rng, self.started = run_dir, random.Random(seed), None
        self.in_checkpoint_writes = 0

    def __call__(self, started: float) -> bool:
        if started != self.started:
            self.started, self.base = started, resume_point(self.run_dir, started)
            self.during_write, self.steps = self.rng.random() < 0.5, self.rng.randint(1, 12)
        if self.during_write:
            hit = writing_past_resume_point(self.run_dir, started)
            self.in_checkpoint_writes += hit
            return hit
        return last_logged_step(self.run_dir) >= self.base + self.steps and \
            (self.run_dir / "metrics.jsonl").stat().st_mtime >= started


def writing_past_resume_point(run_dir: Path, started: float) -> bool:
    """A checkpoint write of this run is under way, at least two checkpoints past where it resumed."""
    resumed = resume_point(run_dir, started)
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
    moments = KillMoments(run_dir, seed=3)
    report = run_until_success([sys.executable, "-m", "kiln", "train", str(recipe)], max_delay_s=400, max_kills=8,
                               seed=3, log=log, timeout_s=400, kill_when=moments, when_fraction=1.0)
    assert len(report.kills) >= 6 and moments.in_checkpoint_writes >= 2, (report, moments.in_checkpoint_writes)
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
    print(f"{report.runs} runs, {len(report.kills)} kills ({moments.in_checkpoint_writes} in checkpoint writes), "
          f"resumed at steps {resumed}, {time.monotonic() - start:.0f}s")
