"""The on-disk dataset format, written here and read by `dataset.py`.

A dataset folder holds:
    tokens-00000.bin ...   the token stream cut into shards of `shard_tokens` ids (raw uint16 or uint32, native
                           little-endian, readable with `numpy.memmap`); documents may run across shard boundaries
    documents.npy          int64 start offset of every document in the stream, plus the total at the end (D + 1 values)
    tokenizer.json         the tokenizer that made the ids
    dataset.json           tokenizer name and hash, dtype, counts per shard and in total, sources, EOS id, arguments
Every document ends with the EOS id, so the stream is documents joined (and terminated) by EOS.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
META_FILE = "dataset.json"
DOCUMENTS_FILE = "documents.npy"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_SHARD_TOKENS = 1 << 28


def shard_name(index: int) -> str:
    return f"tokens-{index:05d}.bin"


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 while every id fits in it (vocab <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends token arrays to consecutive shard files of exactly `shard_tokens` ids (the last may be shorter)."""

    def __init__(self, folder: Path, dtype: np.dtype, shard_tokens: int = DEFAULT_SHARD_TOKENS):
        self.folder, self.dtype, self.shard_tokens = folder, np.dtype(dtype), shard_tokens
        self.shard_sizes: list[int] = []
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        tokens = tokens.astype(self.dtype, copy=False)
        while len(tokens):
            if self._file is None or self.shard_sizes[-1] == self.shard_tokens:
                self._open_next()
            take = min(len(tokens), self.shard_tokens - self.shard_sizes[-1])
            self._file.write(tokens[:take].tobytes())
            self.shard_sizes[-1] += take
            tokens = tokens[take:]

    def _open_next(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.folder / shard_name(len(self.shard_sizes)), "wb")
        self.shard_sizes.append(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def shard_entries(shard_sizes: list[int], doc_starts: np.ndarray, shard_tokens: int) -> list[dict]:
    """Per-shard file name, token count and number of documents that start in it."""
    starts_per_shard = np.bincount(doc_starts // shard_tokens, minlength=len(shard_sizes)) if len(doc_starts) else []
    return [{"file": shard_name(i), "num_tokens": int(size), "num_documents": int(starts_per_shard[i])}
            for i, size in enumerate(shard_sizes)]
