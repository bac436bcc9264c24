"""A tiny real dataset (synthetic English, its own 320-token BPE) and a tiny-model config for trainer tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from kiln.data.prepare import prepare_dataset
from kiln.data.tokenizer import train_bpe
from kiln.train.config import TrainConfig, load_config

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


def tiny_config(dataset: Path, run_dir: Path, **sections) -> TrainConfig:
    """Overrides as {"trainer": {"steps": 4}, ...} on top of a 2-layer, width-32 model."""
    base = {
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64},
        "data": {"paths": [str(dataset)], "seq_len": 32, "val_fraction": 0.1},
        "optim": {"lr": 1e-2},
        "schedule": {"warmup": 2},
        "trainer": {"run_dir": str(run_dir), "steps": 6, "micro_batch_size": 4, "threads": 1, "peak_flops": 1e9},
        "checkpoint": {"every": 3, "keep_last": 5},
        "eval": {"every": 3, "max_batches": 2, "samples": 1, "sample_tokens": 4, "prompts": ["The king"]},
        "logging": {"progress": "lines"},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return load_config(None, base)
