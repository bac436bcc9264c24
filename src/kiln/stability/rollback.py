"""Rollback: reload the last good checkpoint, keep reading past the offending batches, lower the learning rate.

Model and optimizer come back from the checkpoint; the data loader does not, so the batches that caused the
trouble are skipped rather than replayed. Each rollback is a JSON line in RUN/rollbacks.jsonl.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from kiln.distributed import is_rank0, unwrap
from kiln.errors import KilnError
from kiln.train.checkpointing import list_checkpoints, load_checkpoint, step_of

log = logging.getLogger("kiln.train")


class Rollbacks:
    """The trainer's rollback handler: at most `max_rollbacks` times, then the run stops with the reason."""

    def __init__(self, run_dir: Path, lr_factor: float, max_rollbacks: int) -> None:
        self.run_dir, self.lr_factor, self.max_rollbacks, self.count = run_dir, lr_factor, max_rollbacks, 0

    def __call__(self, trainer, reason: str, before_step: int | None = None) -> dict[str, Any]:
        if self.count >= self.max_rollbacks:
            raise KilnError(f"{reason} at step {trainer.state.step}, after {self.count} rollbacks "
                            f"(stability.max_rollbacks={self.max_rollbacks}); stopping")
        self.count += 1
        return rollback(trainer, self.run_dir, reason, self.lr_factor, before_step)


def rollback(trainer, run_dir: Path, reason: str, lr_factor: float, before_step: int | None = None) -> dict[str, Any]:
    """Restore the newest checkpoint (older than `before_step` when given) and scale the learning rate."""
    found = [p for p in list_checkpoints(run_dir) if before_step is None or step_of(p) < before_step]
    if not found:
        older = f" older than step {before_step}" if before_step is not None else ""
        raise KilnError(f"cannot roll back ({reason}) at step {trainer.state.step}: no checkpoint{older} in "
                        f"{run_dir} yet")
    path = found[-1]
    at_step, at_tokens, lr_scale = trainer.state.step, trainer.state.tokens, trainer.state.lr_scale
    trainer.optimizer.zero_grad(set_to_none=True)
    state = load_checkpoint(path, unwrap(trainer.model), trainer.optimizer)
    trainer.state.step, trainer.state.tokens = state["step"], state["tokens"]
    trainer.state.lr_scale = lr_scale * lr_factor
    record = {"time": time.time(), "at_step": at_step, "reason": reason, "restored": path.name,
              "restored_step": state["step"], "lr_scale": trainer.state.lr_scale,
              "skipped_tokens": at_tokens - state["tokens"]}
    if is_rank0():
        with (run_dir / "rollbacks.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
    log.warning("rollback at step %d (%s): restored %s, learning rate x%g", at_step, reason, path.name,
                trainer.state.lr_scale)
    return record
