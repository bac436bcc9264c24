"""RUN/config.yaml, and what a resume with a different config changed.

A resumed run may legitimately change its config (more steps, a lower learning rate), but silently: the run folder
must say so. Each change is printed as `key: old -> new`, logged as a JSON line in RUN/config_changes.jsonl, and
the config it replaces is kept as RUN/config.<step>.yaml (the step it was resumed at).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from kiln.faults.manifest import atomic_write_bytes
from kiln.optim.schedule import lr_multiplier
from kiln.train.config import TrainConfig

CONFIG_FILE = "config.yaml"
CHANGES_FILE = "config_changes.jsonl"
IGNORED = {"trainer.run_dir"}  # a moved run folder is the same run


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1}} -> {"optim.lr": 1}; the model section's overrides count as model keys."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted == "model.overrides":
            flat.update(flatten(value, "model."))
        elif isinstance(value, dict) and value:
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs (absent on one side is None), but the run folder's own path."""
    before, after = flatten(old), flatten(new)
    keys = sorted((set(before) | set(after)) - IGNORED)
    return {k: (before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)}


def schedule_note(cfg: TrainConfig, old_steps: Any, step: int, world_size: int) -> str | None:
    """What a new run length does to a decaying schedule at the resume step, in words."""
    schedule = cfg.schedule
    if schedule.name == "constant" or not isinstance(old_steps, int):
        return None
    scale = 1 if schedule.units == "steps" else cfg.tokens_per_step * world_size
    progress = (step + 1) * scale
    before = lr_multiplier(schedule, progress, old_steps * scale)
    after = lr_multiplier(schedule, progress, cfg.trainer.steps * scale)
    return (f"the {schedule.name} schedule is reshaped from step {step}: the learning rate there goes from "
            f"{before:.3f} to {after:.3f} of its peak")


def record_config(run_dir: Path, cfg: TrainConfig, resumed_step: int | None, world_size: int = 1) -> list[str]:
    """Write RUN/config.yaml; on a resume, log what changed against the previous one. Returns lines to print."""
    path, new = run_dir / CONFIG_FILE, cfg.to_dict()
    lines = []
    if resumed_step is not None and path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        changes = config_changes(old, new)
        if changes:
            lines = _log_changes(run_dir, path, changes, resumed_step)
            if "trainer.steps" in changes:
                note = schedule_note(cfg, changes["trainer.steps"][0], resumed_step, world_size)
                lines += [note] if note else []
    atomic_write_bytes(path, yaml.safe_dump(new, sort_keys=False).encode("utf-8"))
    return lines


def _log_changes(run_dir: Path, path: Path, changes: dict[str, tuple[Any, Any]], step: int) -> list[str]:
    kept = run_dir / f"config.{step}.yaml"
    kept.write_text(path.read_text())
    record = {"step": step, "time": time.time(), "previous": kept.name,
              "changes": {key: list(pair) for key, pair in changes.items()}}
    with (run_dir / CHANGES_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")
    header = f"config changed since the run's last start (previous kept as {kept.name}, logged in {CHANGES_FILE}):"
    return [header] + [f"  {key}: {old!r} -> {new!r}" for key, (old, new) in changes.items()]
