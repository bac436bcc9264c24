"""A tiny-model config for trainer tests (the tiny dataset fixture lives in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.train.config import TrainConfig, load_config
from kiln.train.run import train
from kiln.train.trainer import Trainer


def tiny_config(dataset: Path, run_dir: Path, **sections) -> TrainConfig:
    """Overrides as {"trainer": {"steps": 4}, ...} on top of a 2-layer, width-32 model."""
    base = {
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
        "data": {"paths": [str(dataset)], "seq_len": 32, "val_fraction": 0.1},
        "optim": {"lr": 1e-2},
        "schedule": {"warmup": 2},
        "trainer": {"run_dir": str(run_dir), "steps": 6, "micro_batch_size": 4, "threads": 1, "peak_flops": 1e13},
        "checkpoint": {"every": 3, "keep_last": 5},
        "eval": {"every": 3, "max_batches": 2, "samples": 1, "sample_tokens": 4, "prompts": ["The king"]},
        "logging": {"progress": "lines"},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return load_config(None, base)


def train_until_crash(cfg: TrainConfig, crash_at: int, monkeypatch) -> None:
    """Run `cfg` and crash it as step `crash_at` begins, as a killed process would (after earlier checkpoints)."""
    original = Trainer.train_step

    def crashing(self, micro_batches):
        if self.state.step == crash_at - 1:
            raise RuntimeError("simulated crash")
        return original(self, micro_batches)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", crashing)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(cfg)
