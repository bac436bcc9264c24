"""Tokenizers: load a Hugging Face `tokenizer.json` or the built-in one, fingerprint it, and train byte-level BPE.

A dataset and every checkpoint carry their tokenizer and its hash, so a model never meets foreign token ids unnoticed:
`check_same_tokenizer` is the one place that comparison happens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from kiln.errors import KilnError

BUILTIN_TOKENIZER = "builtin"
ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_TOKENIZER_PATH = ASSETS_DIR / "builtin_tokenizer.json"
EOS_TOKEN = "<|endoftext|>"
# Tried in order when a tokenizer has no "<|endoftext|>": the usual names of an end-of-document token.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>")


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """Load "builtin" (the tokenizer shipped in kiln/assets) or a Hugging Face `tokenizer.json` file or folder."""
    path = BUILTIN_TOKENIZER_PATH if str(name_or_path) == BUILTIN_TOKENIZER else Path(name_or_path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise KilnError(f"tokenizer not found: {name_or_path} (give {BUILTIN_TOKENIZER!r} or a path to a "
                        "Hugging Face tokenizer.json file or a folder holding one)")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # the Rust side raises a bare Exception for malformed files
        raise KilnError(f"cannot read tokenizer {path}: {err}") from err


def tokenizer_name(name_or_path: str | Path) -> str:
    """A short human name: "builtin" or the file's stem (the folder's name for `folder/tokenizer.json`)."""
    if str(name_or_path) == BUILTIN_TOKENIZER:
        return BUILTIN_TOKENIZER
    path = Path(name_or_path)
    if path.is_dir() or path.name == "tokenizer.json":
        return path.resolve().parent.name if path.name == "tokenizer.json" else path.name
    return path.stem


def tokenizer_hash(tok: Tokenizer) -> str:
    """SHA-256 of the tokenizer's canonical JSON, so the same vocabulary and rules give the same hash anywhere."""
    canonical = json.dumps(json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def vocab_size(tok: Tokenizer) -> int:
    """Number of ids the tokenizer can emit, added tokens included."""
    return tok.get_vocab_size(with_added_tokens=True)


def eos_id(tok: Tokenizer) -> int:
    """The end-of-document id that `prepare` puts between documents."""
    for token in EOS_CANDIDATES:
        token_id = tok.token_to_id(token)
        if token_id is not None:
            return token_id
    raise KilnError(f"tokenizer has no end-of-document token: none of {', '.join(EOS_CANDIDATES)} is in its "
                    "vocabulary; add one as a special token")


def check_same_tokenizer(expected_hash: str, tok: Tokenizer, what: str) -> None:
    """Refuse to pair token ids with a tokenizer other than the one that produced them."""
    actual = tokenizer_hash(tok)
    if actual != expected_hash:
        raise KilnError(f"{what} was made with tokenizer {expected_hash[:12]} but the tokenizer given is "
                        f"{actual[:12]}; use the tokenizer stored with it")


def _is_byte_level(tok: Tokenizer) -> bool:
    decoder = json.loads(tok.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(part.get("type") == "ByteLevel" for part in parts)


def token_byte_lengths(tok: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each id stands for, for bits-per-byte; 0 for special tokens and ids past the vocabulary.

    Byte-level BPE spells each byte as one character, so a token's length in characters is its length in bytes;
    decoding single tokens instead would mangle tokens that hold part of a multi-byte character.
    """
    lengths = np.zeros(vocab_size, dtype=np.int32)
    special = {token_id for token_id, added in tok.get_added_tokens_decoder().items() if added.special}
    added = {token_id: added.content for token_id, added in tok.get_added_tokens_decoder().items()}
    byte_level = _is_byte_level(tok)
    for token, token_id in tok.get_vocab(with_added_tokens=True).items():
        if token_id >= vocab_size or token_id in special:
            continue
        if token_id in added:
            lengths[token_id] = len(added[token_id].encode("utf-8"))
        elif byte_level:
            lengths[token_id] = len(token)
        else:
            lengths[token_id] = len(tok.decode([token_id], skip_special_tokens=False).encode("utf-8"))
    return lengths


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE with `<|endoftext|>` as special token id 0.

    Any byte sequence encodes (no unknown token), and training is deterministic for the same texts in the same order.
    """
    if vocab_size < 257:
        raise KilnError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
                        f"{EOS_TOKEN}, so at least 257")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
