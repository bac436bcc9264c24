"""Rollback: reload the last good checkpoint, keep reading past the offending batches, lower the learning rate.

Model and optimizer come back from the checkpoint; the data loader does not, so the batches that caused the
trouble are skipped rather than replayed. Each rollback is a JSON line in RUN/rollbacks.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.train.checkpointing import list_checkpoints, load_checkpoint


def rollback(trainer, run_dir: Path, reason: str, lr_factor: float) -> dict[str, Any]:
    found = list_checkpoints(run_dir)
    if not found:
        raise KilnError(f"cannot roll back ({reason}) at step {trainer.state.step}: no checkpoint in {run_dir} yet")
    path = found[-1]
    at_step, at_tokens = trainer.state.step, trainer.state.tokens
    trainer.optimizer.zero_grad(set_to_none=True)
    state = load_checkpoint(path, trainer.model, trainer.optimizer)
    trainer.state.step, trainer.state.tokens = state["step"], state["tokens"]
    trainer.base_lrs = [lr * lr_factor for lr in trainer.base_lrs]
    record = {"time": time.time(), "at_step": at_step, "reason": reason, "restored": path.name,
              "restored_step": state["step"], "lr_factor": lr_factor, "new_peak_lr": trainer.base_lrs[0],
              "skipped_tokens": at_tokens - state["tokens"]}
    with (run_dir / "rollbacks.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    return record
