"""Kiln: open pretraining of OLMo-family language models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from kiln.model.transformer import Transformer

__version__ = "0.1.0"


def from_pretrained(path: str | Path, device: str = "cpu", dtype: torch.dtype | None = None) -> Transformer:
    """Load a kiln checkpoint (model directory or run folder) or a Hugging Face Olmo2 directory, in eval mode.

    `model(input_ids)` returns logits (batch, seq, padded vocab). Imports stay inside so `import kiln` is light.
    """
    root = Path(path)
    if not (root / "model.json").is_file() and (root / "config.json").is_file():
        from kiln.hf.convert import load_hf_dir

        return load_hf_dir(root, device, dtype)
    from kiln.checkpoint import load_model_dir

    return load_model_dir(root, device, dtype)
