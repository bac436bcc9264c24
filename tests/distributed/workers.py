"""Functions that `launch.run_ranks` runs on every rank."""

from __future__ import annotations

from kiln.distributed import rank
from kiln.train.config import load_config
from kiln.train.run import train
from kiln.train.trainer import Trainer


def train_config(config: dict) -> None:
    train(load_config(None, config))


def train_failing_on_rank_1(config: dict, step: int) -> None:
    """Rank 1 raises before optimizer step `step`; rank 0 is then waiting in that step's first all-reduce."""
    original = Trainer.train_step

    def failing(self: Trainer, micro_batches: list) -> dict:
        if rank() == 1 and self.state.step + 1 == step:
            raise RuntimeError(f"simulated failure on rank 1 at step {step}")
        return original(self, micro_batches)

    Trainer.train_step = failing
    train(load_config(None, config))
