"""Kiln: open pretraining of OLMo-family language models.

    model = kiln.from_pretrained("runs/main")          # a run folder, step folder, export or HF Olmo2 directory
    tokenizer = kiln.load_tokenizer("runs/main")       # the tokenizer stored beside it
    print(kiln.generate_text(model, tokenizer, ["ROMEO:"], max_new_tokens=40, temperature=0.8, seed=0)[0])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from kiln.model.transformer import Transformer

__version__ = "0.1.0"
__all__ = ["__version__", "from_pretrained", "generate_text", "load_tokenizer"]


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


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer stored with a checkpoint (the same places `from_pretrained` accepts)."""
    from kiln.checkpoint import load_checkpoint_tokenizer
    from kiln.errors import KilnError

    tokenizer = load_checkpoint_tokenizer(path)
    if tokenizer is None:
        raise KilnError(f"{str(path)!r} holds no tokenizer.json; load the tokenizer the data was prepared with")
    return tokenizer


def generate_text(model: Transformer, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int = 64,
                  **sampling) -> list[str]:
    """Each prompt with its completion (see `kiln.generate.generate_text` for the sampling options)."""
    from kiln.generate.sampling import generate_text as generate

    return generate(model, tokenizer, prompts, max_new_tokens, **sampling)


def __dir__() -> list[str]:
    return sorted(__all__)
