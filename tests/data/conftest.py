"""Fixtures for the data tests: the committed fixture files, and datasets written straight from token arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kiln.data import shards
from kiln.data.tokenizer import load_tokenizer, tokenizer_hash

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "data"


@pytest.fixture
def corpus_dir() -> Path:
    return ASSETS / "corpus"


@pytest.fixture
def bad_dir() -> Path:
    return ASSETS / "bad"


def write_dataset(folder: Path, docs: list[np.ndarray], shard_tokens: int = 1 << 20) -> Path:
    """A dataset folder in the documented format from token arrays (EOS = 0 is appended), with the built-in tokenizer.

    Writing it by hand rather than through `prepare` pins the on-disk format and gives tests exact token content.
    """
    tok = load_tokenizer("builtin")
    folder.mkdir(parents=True)
    docs = [np.append(np.asarray(d, dtype=np.int64), 0) for d in docs]
    writer = shards.ShardWriter(folder, np.dtype(np.uint16), shard_tokens)
    for doc in docs:
        writer.write(doc)
    writer.close()
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    np.save(folder / shards.DOCUMENTS_FILE, starts)
    (folder / shards.TOKENIZER_FILE).write_text(tok.to_str(), encoding="utf-8")
    meta = {"format_version": shards.FORMAT_VERSION, "dtype": "uint16", "eos_id": 0,
            "tokenizer": {"name": "builtin", "hash": tokenizer_hash(tok), "vocab_size": tok.get_vocab_size(),
                          "file": shards.TOKENIZER_FILE},
            "num_documents": len(docs), "num_tokens": int(starts[-1]), "documents_file": shards.DOCUMENTS_FILE,
            "shards": shards.shard_entries(writer.shard_sizes, starts[:-1], shard_tokens)}
    (folder / shards.META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def numbered_docs(num_docs: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Documents whose tokens say which document they are in: doc i holds ids 1 + i * 100 + (0..99), shuffled."""
    rng = np.random.default_rng(seed)
    return [1 + i * 100 + rng.integers(0, 100, size=length) for i in range(num_docs)]
