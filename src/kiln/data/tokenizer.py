"""Tokenizers: load a Hugging Face `tokenizer.json` or the built-in one, fingerprint it, and train byte-level BPE.

A dataset and every checkpoint carry their tokenizer and its hash, so a model never meets foreign token ids unnoticed:
`check_same_tokenizer` is the one place that comparison happens.
"""

from __future__ import annotations

import hashlib
import json
import re
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
# How SentencePiece-style byte fallback spells one raw byte in the vocabulary.
_BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


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


def _anchor_id(tok: Tokenizer, tokens: dict[int, str]) -> int:
    """The lowest id spelled as one ASCII letter or digit that decodes to itself: text no decoder joins to the next.

    Spelled, not only decoded, so a byte-fallback token such as `<0x61>` (which would fuse with following bytes) is out.
    """
    for token_id, token in sorted(tokens.items()):
        if len(token) == 1 and token.isascii() and token.isalnum() and tok.decode([token_id]) == token:
            return token_id
    raise KilnError("cannot measure token bytes: no token in the vocabulary is a single ASCII letter or digit that "
                    "decodes to itself")


def _decoded_byte_lengths(tok: Tokenizer, tokens: dict[int, str]) -> list[int]:
    """Bytes each token adds when decoded after an anchor token, i.e. in the middle of text.

    Decoding a token alone would drop what decoders strip at the start of text (Metaspace's leading space).
    A byte-fallback token `<0xNN>` that decodes to U+FFFD is one byte of a multi-byte character, so it counts 1.
    """
    ids = list(tokens)
    anchor = _anchor_id(tok, tokens)
    anchor_text = tok.decode([anchor])
    pairs = tok.decode_batch([[anchor, token_id] for token_id in ids])
    anchor_bytes = len(anchor_text.encode("utf-8"))
    lengths = []
    for token_id, pair in zip(ids, pairs, strict=True):
        lone_byte = pair == anchor_text + "\ufffd" and _BYTE_TOKEN.fullmatch(tokens[token_id])
        lengths.append(1 if lone_byte else len(pair.encode("utf-8")) - anchor_bytes)
    return lengths


def token_byte_lengths(tok: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each id contributes to decoded text, the denominator of bits per byte.

    Bits per byte counts the nats of the targets that are text over the bytes of that text, so special tokens (EOS)
    and ids past the vocabulary count 0 bytes and the caller leaves zero-byte targets out of the numerator too.
    Added non-special tokens count their content. Byte-level BPE spells each byte as one character, so a token's
    length in characters is its length in bytes. Any other tokenizer is measured by its decoder in the middle of
    text: `▁the` counts the space it decodes to, and a byte-fallback token `<0xC3>` counts the 1 byte it stands for.
    """
    lengths = np.zeros(vocab_size, dtype=np.int32)
    added = tok.get_added_tokens_decoder()
    for token_id, token in added.items():
        if token_id < vocab_size and not token.special:
            lengths[token_id] = len(token.content.encode("utf-8"))
    tokens = {token_id: token for token, token_id in tok.get_vocab(with_added_tokens=False).items()
              if token_id < vocab_size and token_id not in added}
    if _is_byte_level(tok):
        counts = [len(token) for token in tokens.values()]
    else:
        counts = _decoded_byte_lengths(tok, tokens)
    lengths[list(tokens)] = counts
    return lengths


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2, split_digits: bool = False) -> Tokenizer:
    """Train a GPT-2-style byte-level BPE with `<|endoftext|>` as special token id 0.

    Any byte sequence encodes (no unknown token), and training is deterministic for the same texts in the same order.
    `split_digits` makes every digit its own token, as Llama's and Qwen2's tokenizers do, so a number is always
    spelled the same way (a merged BPE spells "28" as one token and "61" as two).
    """
    if vocab_size < 257:
        raise KilnError(f"--vocab-size {vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
                        f"{EOS_TOKEN}, so at least 257")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok
