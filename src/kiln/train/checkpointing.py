"""Training checkpoints: one folder per step, written under a temporary name and renamed when complete.

    RUN/step000200/
        dcp/                 model + optimizer in torch.distributed.checkpoint format (sharded states fit too)
        model.json           model config        } the kiln model directory of `kiln.checkpoint`, so
        model.safetensors    model weights       } from_pretrained, `kiln export hf` and `kiln generate`
        tokenizer.json       the data's tokenizer} accept a step folder (or the run folder) directly
        train_state.json     step, tokens, data-loader and callback states
        rng.pt               torch / numpy / python RNG states (rank 0's; every rank restores them)
        config.yaml          the resolved experiment config
        MANIFEST.json        size and SHA-256 of every file above, written last: the folder is complete only with it

On several ranks every rank writes its own shards under dcp/ (a file system all ranks share is assumed), the
weights are gathered into model.safetensors, and rank 0 writes the small files and renames the folder. DCP keys
tensors by parameter name, not by rank, so a checkpoint loads on any number of ranks and under any strategy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import warnings
from collections.abc import Collection
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from kiln.checkpoint import WEIGHTS_FILE, read_model_meta, save_model_dir
from kiln.distributed import background_group, barrier, is_rank0
from kiln.errors import KilnError
from kiln.faults.manifest import MANIFEST, commit_checkpoint, fsync_dir
from kiln.model.config import ModelConfig

STATE_FILE = "train_state.json"


@contextmanager
def _single_process_quiet():
    """DCP warns that it assumes a single process when torch.distributed is not initialised; that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"step{step:06d}"


def step_of(path: Path) -> int:
    """The step number of a step folder (`step000200` -> 200)."""
    return int(path.name[len("step"):])


def list_step_dirs(run_dir: Path) -> list[Path]:
    """Every step folder, complete or not, oldest first: the candidates that resuming verifies."""
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()]
    return sorted(found, key=step_of)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Step folders sealed by their manifest, oldest first (`kiln.faults.manifest` verifies them in depth)."""
    return [p for p in list_step_dirs(run_dir) if (p / MANIFEST).is_file()]


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class PendingSave:
    """An asynchronous save in flight. A background thread waits for the DCP shards, then seals the folder with its
    manifest (hashing every file) and renames it, so none of that stalls training; `wait()` joins it."""

    def __init__(self, future: Future, tmp: Path, final: Path) -> None:
        self.future, self.tmp, self.final = future, tmp, final
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._finish, name="kiln-checkpoint")
        self.thread.start()

    def _finish(self) -> None:
        try:
            self.future.result()
            _publish(self.tmp, self.final)
        except BaseException as err:  # noqa: BLE001 - handed to the training thread by wait()
            self.error = err

    def done(self) -> bool:
        return not self.thread.is_alive()

    def wait(self) -> Path:
        """Block until the checkpoint is complete under its step name; raise what went wrong if it is not."""
        self.thread.join()
        if isinstance(self.error, OSError):
            raise _write_error(self.tmp, self.final, self.error) from self.error
        if self.error is not None:
            raise self.error
        return self.final


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    train_state: dict[str, Any], tokenizer=None, config_yaml: str = "",
                    async_save: bool = False) -> Path | PendingSave:
    """Write the checkpoint of `step` (all ranks call this); on an OS error remove the partial folder and say so.

    With `async_save` the shards are written in the background and a `PendingSave` is returned: the step folder
    appears when its `wait()` returns.
    """
    final = step_dir(run_dir, step)
    tmp = run_dir / f".tmp-{final.name}"
    try:
        if is_rank0():
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
        with _single_process_quiet():
            if async_save:
                group = background_group()
                future = dcp.async_save(state, checkpoint_id=str(tmp / "dcp"), process_group=group,
                                        no_dist=group is None)
            else:
                dcp.save(state, checkpoint_id=str(tmp / "dcp"))
        save_model_dir(model, tmp, tokenizer)
        if is_rank0():
            torch.save(rng_state(), tmp / "rng.pt")
            (tmp / "config.yaml").write_text(config_yaml)
            (tmp / STATE_FILE).write_text(json.dumps(train_state, indent=1))
        if async_save:
            return PendingSave(future, tmp, final)
        barrier()
        _publish(tmp, final)
    except OSError as err:
        raise _write_error(tmp, final, err) from err
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rank 0 seals the finished folder with its manifest and makes it visible under its step name."""
    if is_rank0():
        commit_checkpoint(tmp, final)


def _write_error(tmp: Path, final: Path, err: OSError) -> KilnError:
    shutil.rmtree(tmp, ignore_errors=True)
    kept = ", ".join(p.name for p in list_checkpoints(final.parent)) or "none"
    return KilnError(f"could not write checkpoint {final}: {err}. Earlier checkpoints are intact: {kept}")


def prune_checkpoints(run_dir: Path, keep_last: int, keep_steps: Collection[int] = ()) -> None:
    """Delete all but the newest `keep_last` checkpoints (0 keeps all), sparing the steps in `keep_steps`."""
    prunable = [p for p in list_checkpoints(run_dir) if step_of(p) not in keep_steps]
    for old in prunable[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def move_aside(folder: Path, into: Path) -> Path:
    """Move a step folder into `into` (made if needed), where resuming and pruning never look."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / folder.name
    os.replace(folder, target)
    fsync_dir(folder.parent)
    return target


def discard_checkpoints_after(run_dir: Path, step: int, into: Path) -> list[Path]:
    """Move every step folder past `step` (complete or not) into `into`; they belong to a discarded timeline."""
    return [move_aside(path, into) for path in list_step_dirs(run_dir) if step_of(path) > step]


def check_same_shape(path: Path, cfg: ModelConfig, model: nn.Module) -> None:
    """Refuse to resume into a model whose tensors differ from the checkpoint's, naming them. `cfg` is any model
    config with `from_dict` and `to_dict` (a decoder's ModelConfig, a VLM's)."""
    from safetensors import safe_open

    saved_cfg = type(cfg).from_dict(read_model_meta(path))
    if saved_cfg == cfg:
        return
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    current = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    diffs = [f"{k}: checkpoint {saved.get(k, 'absent')} vs model {current.get(k, 'absent')}"
             for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    saved_dict, current_dict = saved_cfg.to_dict(), cfg.to_dict()
    changed = [f"{k}: {saved_dict.get(k)!r} -> {v!r}" for k, v in current_dict.items() if saved_dict.get(k) != v]
    detail = "; ".join(diffs[:20]) if diffs else "no tensor shape differs"
    raise KilnError(f"cannot resume from {path}: the model changed ({', '.join(changed)}). Tensors: {detail}")


def saved_group_names(path: Path) -> list[list[str]] | None:
    """The parameter names of each optimizer group a checkpoint holds; None when it holds no names."""
    keys = dcp.FileSystemReader(str(path / "dcp")).read_metadata().state_dict_metadata
    count = sum(1 for key in keys if key.startswith("optim.param_groups.") and key.endswith(".names"))
    if not count:
        return None
    state = {"optim": {"param_groups": [{"names": []} for _ in range(count)]}}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path / "dcp"))
    return [list(group["names"]) for group in state["optim"]["param_groups"]]


def check_optimizer_groups(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Refuse, by name, a checkpoint whose optimizer groups hold other parameters than this run's.

    torch loads such a state without complaint and leaves groups without their settings (a KeyError at the first
    step); it happens when a resume changes optim.decay_* or a Kiln version regroups parameters.
    """
    saved = saved_group_names(path)
    current = [list(group.get("names", [])) for group in optimizer.param_groups]
    if saved is None or saved == current:
        return
    where = {name: index for index, names in enumerate(saved) for name in names}
    now = {name: index for index, names in enumerate(current) for name in names}
    moved = [f"{name} (group {where.get(name)} -> {now.get(name)})" for name in sorted(set(where) | set(now))
             if where.get(name) != now.get(name)]
    raise KilnError(f"cannot resume the optimizer from {path}: {len(moved)} parameters sit in other groups than "
                    f"when it was saved: {', '.join(moved[:8])}{' ...' if len(moved) > 8 else ''}. Resume with the "
                    f"optim.decay_* settings and the Kiln version that wrote it")


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model, optimizer and RNG states in place; return the saved train state."""
    check_optimizer_groups(path, optimizer)
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    with _single_process_quiet():
        dcp.load(state, checkpoint_id=str(path / "dcp"))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / STATE_FILE).read_text())
