"""Kept checkpoints (`checkpoint.keep_steps`) and forks (`checkpoint.init_from`): a ladder's decay branches."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kiln.errors import KilnError
from kiln.train import checkpointing
from kiln.train.run import train

from .conftest import tiny_config

WSD = {"name": "wsd", "decay_fraction": 0.1, "min_lr_ratio": 0.0, "warmup": 2}


def _final(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records[-1], load_file(str(checkpointing.list_checkpoints(run_dir)[-1] / "model.safetensors"))


def test_keep_steps_are_saved_and_survive_pruning(tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", trainer={"steps": 7},
                      checkpoint={"every": 0, "keep_last": 1, "keep_steps": [2, 5]})
    train(cfg)
    kept = [checkpointing.step_of(p) for p in checkpointing.list_checkpoints(tmp_path / "run")]
    assert kept == [2, 5, 7]


def test_keep_steps_must_be_positive(tiny_dataset, tmp_path):
    with pytest.raises(KilnError, match="checkpoint.keep_steps"):
        tiny_config(tiny_dataset, tmp_path / "run", checkpoint={"keep_steps": [0, 3]})


def test_a_decay_branch_forked_from_the_stable_phase_equals_a_run_of_its_own_length(tiny_dataset, tmp_path):
    """WSD's LR before the decay does not depend on the run's length, so forking a 20-step run at step 9 and
    decaying over steps 10 gives exactly a 10-step run trained from scratch: one run yields every duration."""
    common = dict(schedule=WSD, eval={"every": 0})
    main = tiny_config(tiny_dataset, tmp_path / "main", trainer={"steps": 20}, **common,
                       checkpoint={"every": 0, "keep_steps": [9]})
    train(main)
    branch = tiny_config(tiny_dataset, tmp_path / "branch", trainer={"steps": 10}, **common,
                         checkpoint={"every": 0, "init_from": str(tmp_path / "main" / "step000009")})
    run = train(branch)
    alone = tiny_config(tiny_dataset, tmp_path / "alone", trainer={"steps": 10}, **common, checkpoint={"every": 0})
    train(alone)
    (branch_last, branch_weights), (alone_last, alone_weights) = _final(tmp_path / "branch"), _final(tmp_path / "alone")
    assert run.trainer.state.step == 10
    first = json.loads((tmp_path / "branch" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 10  # the branch logs only its own steps
    assert branch_last["val_loss"] == pytest.approx(alone_last["val_loss"], rel=1e-6)
    main_last, _ = _final(tmp_path / "main")
    assert main_last["val_loss"] != pytest.approx(branch_last["val_loss"], rel=1e-3)  # a different model
    for name, tensor in alone_weights.items():
        torch.testing.assert_close(branch_weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_run_folder_with_its_own_checkpoint_resumes_it_not_the_fork(tiny_dataset, tmp_path):
    main = tiny_config(tiny_dataset, tmp_path / "main", checkpoint={"every": 0, "keep_steps": [3]})
    train(main)
    branch = tiny_config(tiny_dataset, tmp_path / "branch", trainer={"steps": 5},
                         checkpoint={"every": 0, "init_from": str(tmp_path / "main" / "step000003")})
    train(branch)
    again = train(branch)
    assert again.complete and again.resumed_from == tmp_path / "branch" / "step000005"


def test_init_from_an_incomplete_checkpoint_is_refused_by_name(tiny_dataset, tmp_path):
    (tmp_path / "main" / "step000003").mkdir(parents=True)
    cfg = tiny_config(tiny_dataset, tmp_path / "branch",
                      checkpoint={"init_from": str(tmp_path / "main" / "step000003")})
    with pytest.raises(KilnError, match="checkpoint.init_from=.*step000003.*not a complete checkpoint"):
        train(cfg)


def test_a_fork_starts_the_data_afresh_when_told_to(tiny_dataset, tmp_path):
    """init_data_position=false: weights, optimizer and step come from the fork, the batches from the data's start."""
    train(tiny_config(tiny_dataset, tmp_path / "main", trainer={"steps": 3}, checkpoint={"every": 0}))
    fresh = train(tiny_config(tiny_dataset, tmp_path / "fresh", trainer={"steps": 2}, checkpoint={"every": 0}))
    fork = {"every": 0, "init_from": str(tmp_path / "main" / "step000003")}
    on = train(tiny_config(tiny_dataset, tmp_path / "on", trainer={"steps": 5}, checkpoint=fork))
    afresh = train(tiny_config(tiny_dataset, tmp_path / "afresh", trainer={"steps": 5},
                               checkpoint={**fork, "init_data_position": False}))
    assert afresh.trainer.state.step == on.trainer.state.step == 5
    position = {name: run.train_loader.state_dict()["position"] for name, run in
                [("fresh", fresh), ("on", on), ("afresh", afresh)]}
    assert position["afresh"] == position["fresh"] != position["on"]
    assert _final(tmp_path / "afresh")[0]["loss"] != _final(tmp_path / "on")[0]["loss"]


def test_a_fork_on_fresh_data_resumes_its_own_position_after_a_stop(tiny_dataset, tmp_path):
    """Once the fork has a checkpoint of its own, a restart resumes that (its data position included), so a stop
    and resume trains exactly as one uninterrupted fork does."""
    train(tiny_config(tiny_dataset, tmp_path / "main", trainer={"steps": 3}, checkpoint={"every": 0}))
    fork = {"every": 1, "init_from": str(tmp_path / "main" / "step000003"), "init_data_position": False}
    common = dict(schedule={"name": "constant", "warmup": 0}, eval={"every": 0})
    train(tiny_config(tiny_dataset, tmp_path / "whole", trainer={"steps": 7}, checkpoint=fork, **common))
    train(tiny_config(tiny_dataset, tmp_path / "stopped", trainer={"steps": 5}, checkpoint=fork, **common))
    again = train(tiny_config(tiny_dataset, tmp_path / "stopped", trainer={"steps": 7}, checkpoint=fork, **common))
    assert again.resumed_from == tmp_path / "stopped" / "step000005"
    losses = {name: [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
              for name in ("whole", "stopped")}
    assert losses["stopped"] == losses["whole"] and len(losses["whole"]) == 4
