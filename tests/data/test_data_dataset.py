from __future__ import annotations

import json

import numpy as np
import pytest

from kiln.data.dataset import TokenDataset
from kiln.errors import KilnError

from .conftest import numbered_docs, write_dataset


def test_open_reads_tokens_and_documents_across_shards(tmp_path):
    docs = numbered_docs(5, 30)
    ds = TokenDataset.open(write_dataset(tmp_path / "ds", docs, shard_tokens=40))
    assert ds.num_documents == 5 and ds.num_tokens == 155 and ds.eos_id == 0 and ds.vocab_size == 8192
    assert len(ds.shard_arrays) == 4
    for i, doc in enumerate(docs):
        assert np.array_equal(ds.document(i), np.append(doc, 0))
    assert np.array_equal(ds.tokens(0, 155), np.concatenate([np.append(d, 0) for d in docs]))


def test_truncated_shard_is_refused_naming_the_file(tmp_path):
    folder = write_dataset(tmp_path / "ds", numbered_docs(3, 30), shard_tokens=40)
    shard = folder / "tokens-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(KilnError, match="tokens-00001.bin is 78 bytes but dataset.json expects 40 uint16"):
        TokenDataset.open(folder)


def test_ids_past_the_vocabulary_are_refused_naming_the_file(tmp_path):
    folder = write_dataset(tmp_path / "ds", numbered_docs(3, 30), shard_tokens=40)
    tokens = np.memmap(folder / "tokens-00002.bin", dtype=np.uint16, mode="r+")
    tokens[3] = 9000
    tokens.flush()
    with pytest.raises(KilnError, match="tokens-00002.bin holds token id 9000, past the tokenizer's vocabulary"):
        TokenDataset.open(folder)
    assert TokenDataset.open(folder, verify_ids=False).num_tokens == 93


def test_unfinished_folder_and_foreign_tokenizer_are_refused(tmp_path):
    with pytest.raises(KilnError, match="not a kiln dataset: .*dataset.json not found.*unfinished"):
        TokenDataset.open(tmp_path)
    with pytest.raises(KilnError, match=r"not found; make it with `kiln prepare INPUTS --out .*missing`"):
        TokenDataset.open(tmp_path / "missing")
    folder = write_dataset(tmp_path / "ds", numbered_docs(2, 10))
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["added_tokens"][0]["content"] = "<|eos|>"
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(KilnError, match="was made with tokenizer .* but the tokenizer given is"):
        _ = TokenDataset.open(folder).tokenizer


def test_document_index_must_agree_with_metadata(tmp_path):
    folder = write_dataset(tmp_path / "ds", numbered_docs(3, 10))
    np.save(folder / "documents.npy", np.array([0, 11, 22], dtype=np.int64))
    with pytest.raises(KilnError, match="documents.npy disagrees with dataset.json"):
        TokenDataset.open(folder)
