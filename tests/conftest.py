"""Shared fixtures: a tiny real dataset (synthetic English, its own 320-token BPE), prepared once per session."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kiln.data.prepare import prepare_dataset
from kiln.data.tokenizer import train_bpe

WORDS = ("the king queen sword crown river stone light dark night morning speaks walks runs sees holds "
         "gives takes old young brave quiet loud green red and but with of to from").split()


def _document(rng: random.Random) -> str:
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
                 for _ in range(rng.randint(3, 12))]
    return " ".join(sentences)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny-data")
    rng = random.Random(0)
    docs = [_document(rng) for _ in range(160)]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    tokenizer = root / "tokenizer.json"
    train_bpe(docs, vocab_size=320).save(str(tokenizer))
    return prepare_dataset([corpus], root / "dataset", tokenizer, workers=1, progress=False)
