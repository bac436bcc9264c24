"""RUN/metrics.jsonl is crash-safe: every step has exactly one line after crashes at the worst moments."""

from __future__ import annotations

import json
import logging
import os

import pytest

from kiln.train.callbacks import Checkpointer
from kiln.train.metrics_log import trim_metrics
from kiln.train.run import train

from .conftest import tiny_config


def _steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_crash_just_after_a_checkpoint_commits_loses_no_line(tiny_dataset, tmp_path, monkeypatch):
    """The checkpoint of step 3 is on disk when the process dies: its line must already be there too."""
    cfg = tiny_config(tiny_dataset, tmp_path / "run", eval={"every": 0, "samples": 0})
    original = Checkpointer.on_step_end

    def die_after_commit(self, trainer, metrics):
        original(self, trainer, metrics)
        if trainer.state.step == 3:
            raise RuntimeError("killed after the commit")

    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "on_step_end", die_after_commit)
        with pytest.raises(RuntimeError, match="killed"):
            train(cfg)
    assert (tmp_path / "run/step000003/MANIFEST.json").exists()
    run = train(cfg)
    assert run.resumed_from.name == "step000003"
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_a_torn_last_line_is_dropped_with_a_warning_on_resume(tiny_dataset, tmp_path, caplog):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", trainer={"steps": 3}, eval={"every": 0, "samples": 0})
    train(cfg)
    metrics = tmp_path / "run/metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 4, "loss": 3.1')  # killed in the middle of writing step 4's line
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        train(tiny_config(tiny_dataset, tmp_path / "run", eval={"every": 0, "samples": 0}))
    assert "torn last line" in caplog.text
    assert _steps(tmp_path / "run") == [1, 2, 3, 4, 5, 6]


def test_trim_is_atomic_a_crash_during_it_keeps_the_history(tmp_path, monkeypatch):
    file = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6))
    file.write_text(text)

    def crash(*args):
        raise OSError("killed during the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="killed"):
        trim_metrics(file, 2)
    assert file.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left behind
    monkeypatch.undo()
    assert [json.loads(x)["step"] for x in trim_metrics(file, 2)] == [3, 4, 5]
    assert file.read_text() == text[: text.index('{"step": 3')]


def test_a_bad_line_that_is_not_the_last_is_an_error_naming_it(tmp_path):
    file = tmp_path / "metrics.jsonl"
    file.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(Exception, match="line 2"):
        trim_metrics(file, 1)
