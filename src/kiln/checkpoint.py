"""The kiln model directory: what a trained model is on disk, for generation, evaluation and export.

A model directory holds

    model.json          {"format": "kiln", "format_version": 1, "model": <ModelConfig.to_dict()>}
    model.safetensors   the `Transformer` state dict (fp32 or bf16)
    tokenizer.json      optional, Hugging Face `tokenizers` format

Readers ignore other top-level keys of model.json and other files beside these (the trainer adds dcp/,
train_state.json, ...), so later versions can add to the format without breaking older readers. A run
folder whose subfolders are `step<N>` model directories resolves to the highest step that has weights.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from kiln.errors import KilnError
from kiln.model.config import ModelConfig
from kiln.model.transformer import Transformer

FORMAT = "kiln"
FORMAT_VERSION = 1
CONFIG_FILE = "model.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"

_STEP_DIR = re.compile(r"step(\d+)")
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")
_PAD_NAMES = ("<|pad|>", "<pad>", "<|padding|>", "[PAD]")
_MAX_LISTED = 20


def save_model_dir(model: Transformer, out_dir: str | Path, tokenizer: Tokenizer | str | Path | None = None) -> Path:
    """Write `model` (and a tokenizer object or tokenizer.json path) as a kiln model directory.

    With a sharded model every rank must call this (gathering is collective); only rank 0 writes.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper prefixes every name with _orig_mod.
    out = Path(out_dir)
    writer = _is_rank0()
    state = {}
    for name, tensor in model.state_dict().items():
        full = _full_tensor(tensor)
        if writer:
            state[name] = full.detach().contiguous().cpu()
    if not writer:
        return out
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state, out / WEIGHTS_FILE)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.cfg.to_dict()}
    _atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n"))
    if isinstance(tokenizer, Tokenizer):
        tokenizer.save(str(out / TOKENIZER_FILE))
    elif tokenizer is not None:
        shutil.copyfile(tokenizer, out / TOKENIZER_FILE)
    return out


def _is_rank0() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
        or torch.distributed.get_rank() == 0


def _full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a sharded DTensor (FSDP2; a collective, so every rank must call it), else itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading the mask means setting it: done once, at import, before any thread starts
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_read_umask()


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file under `path`.

    The file gets the mode any new file gets (safetensors creates its files 0600, unreadable to other users).
    """
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file, written atomically and readable like every other file of the checkpoint."""
    _atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def resolve_model_dir(path: str | Path) -> Path:
    """The model directory at `path`: the path itself, or the highest `step<N>` subfolder holding weights."""
    root = Path(path)
    if not root.exists():
        raise KilnError(f"checkpoint path {str(root)!r} does not exist")
    if (root / CONFIG_FILE).is_file():
        return root
    steps = [
        (int(match.group(1)), child) for child in root.iterdir()
        if child.is_dir() and (match := _STEP_DIR.fullmatch(child.name)) and (child / WEIGHTS_FILE).is_file()
    ]
    if not steps:
        raise KilnError(
            f"{str(root)!r} is not a kiln model directory: expected {CONFIG_FILE} and {WEIGHTS_FILE} in it, "
            f"or step<N> subfolders holding them"
        )
    return max(steps)[1]


def read_model_config(model_dir: str | Path) -> ModelConfig:
    """The ModelConfig of a model directory, refusing files of another format or of a newer format version."""
    return ModelConfig.from_dict(read_model_meta(model_dir))


def read_model_meta(model_dir: str | Path) -> dict:
    """The "model" entry of a model directory's config, whatever the model (a decoder, a VLM), checked as above."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise KilnError(f"cannot read {path}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model" not in meta:
        raise KilnError(f"{path} is not a kiln model config (expected \"format\": \"kiln\" and a \"model\" key)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise KilnError(
            f"{path} has format_version {version!r}; this kiln reads versions up to {FORMAT_VERSION}, upgrade kiln"
        )
    return meta["model"]


def load_model_dir(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                   ) -> Transformer:
    """Build the Transformer of a model directory (or run folder) and load its weights, in eval mode."""
    model_dir = resolve_model_dir(path)
    cfg = read_model_config(model_dir)
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise KilnError(f"{model_dir} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    return build_with_state(cfg, load_file(str(weights), device=str(device)), dtype)


def build_with_state(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | None = None
                     ) -> Transformer:
    """A Transformer holding exactly `state` (no wasted random init: built on the meta device)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if dtype is not None:
        state = {name: t.to(dtype) for name, t in state.items()}
    load_state_strict(model, state)
    return model.eval()


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model`, failing with one message listing every missing, unexpected or misshapen tensor."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    misshapen = [
        f"{name}: expected {tuple(expected[name].shape)}, got {tuple(state[name].shape)}"
        for name in expected if name in state and state[name].shape != expected[name].shape
    ]
    problems = [
        f"{label} ({len(items)}): {_listing(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen)) if items
    ]
    if problems:
        raise KilnError("weights do not match the model config; " + "; ".join(problems))
    on_meta = any(t.is_meta for t in expected.values())
    model.load_state_dict(state, strict=True, assign=on_meta)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def load_checkpoint_tokenizer(path: str | Path) -> Tokenizer | None:
    """The tokenizer stored with a checkpoint (kiln model directory, run folder or HF directory), if any."""
    root = Path(path)
    is_model_dir = (root / TOKENIZER_FILE).is_file() or (root / "config.json").is_file()
    model_dir = root if is_model_dir else resolve_model_dir(root)
    file = model_dir / TOKENIZER_FILE
    return Tokenizer.from_file(str(file)) if file.is_file() else None


def special_token_id(tokenizer: Tokenizer, kind: str) -> int | None:
    """The id of the end-of-sequence ("eos") or padding ("pad") token, found by its conventional spelling."""
    names = {"eos": _EOS_NAMES, "pad": _PAD_NAMES}[kind]
    for name in names:
        token_id = tokenizer.token_to_id(name)
        if token_id is not None:
            return token_id
    return None
