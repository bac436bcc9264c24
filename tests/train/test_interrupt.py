"""Ctrl-C during `kiln train` says where the run got to and which checkpoint the same command resumes from."""

import json

import pytest

import kiln.train.run
from kiln.cli import main
from kiln.faults.manifest import MANIFEST
from kiln.train.checkpointing import step_dir
from kiln.train.metrics_log import METRICS_FILE


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)


def _interrupt_after(run_dir, sealed: list[int], unsealed: list[int], logged_steps: int):
    """A stand-in for `train` that leaves checkpoints and a metrics log behind, then gets Ctrl-C."""
    def interrupted(cfg, resume=None):
        for step in sealed + unsealed:
            step_dir(run_dir, step).mkdir(parents=True)
        for step in sealed:
            (step_dir(run_dir, step) / MANIFEST).write_text("{}")
        if logged_steps:
            lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(1, logged_steps + 1)]
            (run_dir / METRICS_FILE).write_text("\n".join(lines) + "\n")
        raise KeyboardInterrupt
    return interrupted


def test_ctrl_c_names_the_step_and_the_newest_sealed_checkpoint(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(kiln.train.run, "train", _interrupt_after(run_dir, [3, 6], [9], logged_steps=10))
    assert main(["train", f"--trainer.run_dir={run_dir}"]) == 130
    assert capsys.readouterr().err.strip() == (f"interrupted at step 10; run the same command again to resume from "
                                               f"{step_dir(run_dir, 6)} (the newest checkpoint)")


def test_ctrl_c_before_any_checkpoint_says_the_run_starts_over(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    monkeypatch.setattr(kiln.train.run, "train", _interrupt_after(run_dir, [], [], logged_steps=0))
    assert main(["train", f"--trainer.run_dir={run_dir}", "--checkpoint.every=50"]) == 130
    assert capsys.readouterr().err.strip() == ("interrupted, before the first checkpoint (checkpoint.every=50); "
                                               "running the same command again starts from step 0")
