"""Rollback: reload the last good checkpoint, keep reading past the offending batches, lower the learning rate.

Model and optimizer come back from the checkpoint; the data loader does not, so the batches that caused the
trouble are skipped rather than replayed. Each rollback is a JSON line in RUN/rollbacks.jsonl, written before
anything is moved. The discarded timeline (checkpoints past the restored one, their metrics lines) is moved under
RUN/discarded/rollbackN-at-stepS/ for forensics, so a restart cannot resume from it. The rollback count and the
lowered learning rate live in the train state of later checkpoints; until one is written,
`carry_rollback_state` takes them from the log, and `finish_interrupted_rollback` moves aside what a kill in the
middle of a rollback left behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from kiln.distributed import barrier, is_rank0, unwrap
from kiln.errors import KilnError
from kiln.train.checkpointing import STATE_FILE, list_checkpoints, load_checkpoint, move_aside, step_of

log = logging.getLogger("kiln.train")
LOG_FILE = "rollbacks.jsonl"


class Rollbacks:
    """The trainer's rollback handler: at most `max_rollbacks` times over the whole run, then it stops."""

    def __init__(self, run_dir: Path, lr_factor: float, max_rollbacks: int) -> None:
        self.run_dir, self.lr_factor, self.max_rollbacks = run_dir, lr_factor, max_rollbacks

    def __call__(self, trainer, reason: str, before_step: int | None = None) -> tuple[int, Path]:
        if trainer.state.rollbacks >= self.max_rollbacks:
            raise KilnError(f"{reason} at step {trainer.state.step}, after {trainer.state.rollbacks} rollbacks "
                            f"(stability.max_rollbacks={self.max_rollbacks}); stopping")
        record = rollback(trainer, self.run_dir, reason, self.lr_factor, before_step)
        return record["restored_step"], self.run_dir / record["discarded"]


def rollback(trainer, run_dir: Path, reason: str, lr_factor: float, before_step: int | None = None) -> dict[str, Any]:
    """Restore the newest checkpoint (older than `before_step` when given), scale the learning rate, log it."""
    found = [p for p in list_checkpoints(run_dir) if before_step is None or step_of(p) < before_step]
    if not found:
        older = f" older than step {before_step}" if before_step is not None else ""
        raise KilnError(f"cannot roll back ({reason}) at step {trainer.state.step}: no checkpoint{older} in "
                        f"{run_dir} yet")
    path = found[-1]
    at_step, at_tokens, lr_scale, count = (trainer.state.step, trainer.state.tokens, trainer.state.lr_scale,
                                           trainer.state.rollbacks + 1)
    trainer.optimizer.zero_grad(set_to_none=True)
    state = load_checkpoint(path, unwrap(trainer.model), trainer.optimizer)
    trainer.state.step, trainer.state.tokens = state["step"], state["tokens"]
    trainer.state.lr_scale, trainer.state.rollbacks = lr_scale * lr_factor, count
    record = {"time": time.time(), "at_step": at_step, "reason": reason, "restored": path.name,
              "restored_step": state["step"], "lr_scale": trainer.state.lr_scale, "rollbacks": count,
              "skipped_tokens": at_tokens - state["tokens"],
              "discarded": f"discarded/rollback{count}-at-step{at_step:06d}"}
    if is_rank0():
        _append_durably(run_dir / LOG_FILE, record)
    log.warning("rollback at step %d (%s): restored %s, learning rate x%g; later checkpoints moved to %s", at_step,
                reason, path.name, trainer.state.lr_scale, record["discarded"])
    return record


def _append_durably(file: Path, record: dict[str, Any]) -> None:
    with file.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def last_rollback(run_dir: Path) -> dict[str, Any] | None:
    """The newest complete record of RUN/rollbacks.jsonl (a torn last line is ignored), or None."""
    file = run_dir / LOG_FILE
    if not file.exists():
        return None
    for line in reversed(file.read_text().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return None


def _rollbacks_of(folder: Path) -> int | None:
    try:
        return int(json.loads((folder / STATE_FILE).read_text()).get("rollbacks", 0))
    except (OSError, ValueError, AttributeError):
        return None


def finish_interrupted_rollback(run_dir: Path) -> None:
    """Before resuming: move aside checkpoints of a timeline that the last rollback discarded but a kill kept it
    from moving (past the restored step, written with fewer rollbacks than the log counts)."""
    record = last_rollback(run_dir)
    if record is None:
        return
    if is_rank0():
        for path in list_checkpoints(run_dir):
            if step_of(path) > record["restored_step"] and (_rollbacks_of(path) or 0) < record["rollbacks"]:
                move_aside(path, run_dir / record["discarded"])
    barrier()


def carry_rollback_state(run_dir: Path, state) -> None:
    """After loading a checkpoint written before the last rollback, take that rollback's count and learning-rate
    scale (a TrainState's `rollbacks` and `lr_scale`), so a restart neither undoes the cut nor resets the count."""
    record = last_rollback(run_dir)
    if record is not None and state.rollbacks < record["rollbacks"]:
        state.rollbacks, state.lr_scale = record["rollbacks"], record["lr_scale"]
