"""Auto-resume picks the newest checkpoint that verifies; damaged ones are skipped by name, never loaded."""

import logging

import pytest

from kiln.faults.manifest import NoValidCheckpoint
from kiln.train.run import build_run, train

from .conftest import tiny_config


@pytest.fixture
def finished_run(tiny_dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(tiny_dataset, run_dir, eval={"every": 0, "samples": 0}))
    return run_dir


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def test_a_truncated_newest_checkpoint_is_skipped_with_a_warning(tiny_dataset, finished_run, caplog):
    _truncate(finished_run / "step000006/model.safetensors")
    with caplog.at_level(logging.WARNING):
        run = build_run(tiny_config(tiny_dataset, finished_run))
    assert run.resumed_from.name == "step000003"
    assert "step000006" in caplog.text and "model.safetensors" in caplog.text
    assert run.trainer.state.step == 3


def test_a_missing_manifest_makes_a_checkpoint_incomplete(tiny_dataset, finished_run):
    (finished_run / "step000006/MANIFEST.json").unlink()
    assert build_run(tiny_config(tiny_dataset, finished_run)).resumed_from.name == "step000003"


def test_a_flipped_byte_is_caught_with_hash_verification(tiny_dataset, finished_run):
    shard = next((finished_run / "step000006/dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert build_run(tiny_config(tiny_dataset, finished_run)).resumed_from.name == "step000006"  # sizes agree
    cfg = tiny_config(tiny_dataset, finished_run, checkpoint={"verify_hashes": True})
    assert build_run(cfg).resumed_from.name == "step000003"


def test_when_no_checkpoint_verifies_the_run_stops_unless_told(tiny_dataset, finished_run):
    for step in ("step000003", "step000006"):
        _truncate(finished_run / step / "train_state.json")
    with pytest.raises(NoValidCheckpoint, match="step000003.*step000006|step000006.*step000003"):
        build_run(tiny_config(tiny_dataset, finished_run))
    run = build_run(tiny_config(tiny_dataset, finished_run, checkpoint={"allow_fresh": True}))
    assert run.resumed_from is None and run.trainer.state.step == 0


def test_asynchronous_checkpoints_are_complete_and_equal_to_synchronous_ones(tiny_dataset, tmp_path):
    from kiln.faults.manifest import verify_checkpoint
    from kiln.train.checkpointing import list_checkpoints

    for name, async_save in (("sync", False), ("async", True)):
        train(tiny_config(tiny_dataset, tmp_path / name, checkpoint={"every": 2, "async_save": async_save},
                          eval={"every": 0, "samples": 0}))
    sync, async_ = (list_checkpoints(tmp_path / n) for n in ("sync", "async"))
    assert [p.name for p in async_] == [p.name for p in sync] == ["step000002", "step000004", "step000006"]
    for a, s in zip(async_, sync):
        verify_checkpoint(a, hashes=True)
        assert (a / "model.safetensors").read_bytes() == (s / "model.safetensors").read_bytes()
    assert not list((tmp_path / "async").glob(".tmp-*"))
    resumed = build_run(tiny_config(tiny_dataset, tmp_path / "async", trainer={"steps": 8}))
    assert resumed.resumed_from.name == "step000006"


def test_a_resume_that_regroups_the_optimizer_is_refused_by_name(tiny_dataset, finished_run):
    """torch would load the old groups into the new ones and fail at the first step with a bare KeyError."""
    from kiln.errors import KilnError

    with pytest.raises(KilnError, match=r"parameters sit in other groups.*norm.*\(group 0 -> 1\).*optim\.decay_"):
        build_run(tiny_config(tiny_dataset, finished_run, optim={"decay_norms": False}))
    assert build_run(tiny_config(tiny_dataset, finished_run)).trainer.state.step == 6  # same groups: resumes
