"""A model to evaluate, from a path: its scoring backend, its tokenizer as a pair encoder, and a fingerprint."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln.errors import KilnError
from kiln.eval.backends import Backend, is_hf_dir, is_olmo2_dir, load_backend
from kiln.eval.scoring import PairEncoder

_FINGERPRINT_SPAN = 1 << 20  # bytes hashed at each end of a weights file


@dataclass
class LoadedModel:
    backend: Backend
    encoder: PairEncoder
    vocab_size: int
    kind: str  # "kiln" or "transformers"
    fingerprint: str


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32,
               hf: bool = False) -> LoadedModel:
    """Load for scoring: kiln checkpoints and Olmo2 folders run on kiln's model, other HF folders on transformers."""
    root = Path(path)
    backend = load_backend(root, device, dtype, hf)
    kind = "transformers" if hf or (is_hf_dir(root) and not is_olmo2_dir(root)) else "kiln"
    encoder, tokenizer_vocab = _encoder(root, kind)
    check_vocab(tokenizer_vocab, backend.vocab_size, exact=not is_hf_dir(root))
    return LoadedModel(backend, encoder, backend.vocab_size, kind, model_fingerprint(root))


def _encoder(root: Path, kind: str) -> tuple[PairEncoder, int]:
    from kiln.checkpoint import load_checkpoint_tokenizer

    tokenizer = load_checkpoint_tokenizer(root)
    if tokenizer is not None:
        from kiln.data.tokenizer import eos_id, vocab_size

        encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        return PairEncoder(encode, eos_id(tokenizer)), vocab_size(tokenizer)
    if kind != "transformers":
        raise KilnError(f"{str(root)!r} holds no tokenizer.json; evaluation needs the model's tokenizer")
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(root))
    prefix = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.eos_token_id
    encode = lambda texts: hf_tok(texts, add_special_tokens=False)["input_ids"]
    return PairEncoder(encode, prefix), len(hf_tok)


def check_vocab(tokenizer_vocab: int, model_vocab: int, exact: bool) -> None:
    """Refuse a tokenizer that does not match the model: one that can emit ids the model has no embedding for, or
    (kiln models, whose config records the training tokenizer's size) one of any other size."""
    if tokenizer_vocab > model_vocab:
        raise KilnError(f"the tokenizer has {tokenizer_vocab} tokens but the model only {model_vocab} embeddings: "
                        "ids past the model's vocabulary would be scored with garbage; use the model's own tokenizer")
    if exact and tokenizer_vocab != model_vocab:
        raise KilnError(f"the tokenizer has {tokenizer_vocab} tokens but the model was trained with a vocabulary of "
                        f"{model_vocab}: this is not the model's tokenizer")


def model_fingerprint(root: Path) -> str:
    """SHA-256 over the config and, per weights file, its size and first and last MiB: cheap on large models, and
    different whenever the weights differ in practice."""
    from kiln.checkpoint import resolve_model_dir

    folder = root if is_hf_dir(root) else resolve_model_dir(root)
    digest = hashlib.sha256()
    for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as f:
            digest.update(f.read(_FINGERPRINT_SPAN))
            if size > 2 * _FINGERPRINT_SPAN:
                f.seek(-_FINGERPRINT_SPAN, 2)
                digest.update(f.read())
    return digest.hexdigest()[:16]
