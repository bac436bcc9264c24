from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from kiln.data import commands, prepare
from kiln.data.dataset import TokenDataset
from kiln.data.prepare import builtin_dataset, prepare_dataset
from kiln.data.sources import SkipReport, read_documents, resolve_inputs
from kiln.data.tokenizer import load_tokenizer, tokenizer_hash
from kiln.errors import KilnError


def _shard_bytes(folder) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob("tokens-*.bin")))


def test_prepare_writes_documents_joined_by_eos(tmp_path, corpus_dir):
    out = prepare_dataset([corpus_dir], tmp_path / "ds", workers=0, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    tok = load_tokenizer("builtin")
    docs = [d for f in resolve_inputs([corpus_dir], SkipReport()) for d in read_documents(f)]
    expected = np.concatenate([tok.encode(d).ids + [0] for d in docs])
    stream = np.memmap(out / "tokens-00000.bin", dtype=np.uint16, mode="r")
    assert np.array_equal(stream, expected)
    assert meta["dtype"] == "uint16" and meta["eos_id"] == 0
    assert meta["num_documents"] == len(docs) == 15 and meta["num_tokens"] == len(expected)
    assert meta["tokenizer"]["hash"] == tokenizer_hash(tok) and meta["tokenizer"]["name"] == "builtin"
    assert [s["documents"] for s in meta["sources"]] == [1, 1, 6, 3, 2, 2]
    assert meta["skipped"]["ignored_file"]["count"] == 1
    assert meta["args"]["text_field"] == "text"
    starts = np.load(out / "documents.npy")
    assert np.all(stream[starts[1:] - 1] == 0) and starts[-1] == len(stream)
    assert not list(tmp_path.glob(".ds.tmp-*"))


def test_shards_are_byte_identical_across_worker_counts_and_shard_sizes(tmp_path, corpus_dir):
    one = prepare_dataset([corpus_dir], tmp_path / "one", workers=0, progress=False)
    small = prepare_dataset([corpus_dir], tmp_path / "small", workers=0, shard_tokens=100, progress=False)
    again = prepare_dataset([corpus_dir], tmp_path / "again", workers=0, progress=False)
    assert (one / "tokens-00000.bin").read_bytes() == (again / "tokens-00000.bin").read_bytes()
    assert _shard_bytes(small) == _shard_bytes(one)
    meta = json.loads((small / "dataset.json").read_text())
    assert len(meta["shards"]) > 1 and all(s["num_tokens"] == 100 for s in meta["shards"][:-1])
    assert sum(s["num_documents"] for s in meta["shards"]) == meta["num_documents"]
    ds = TokenDataset.open(small)
    assert np.array_equal(ds.tokens(95, 205), np.fromfile(one / "tokens-00000.bin", dtype=np.uint16)[95:205])


def test_fast_encoder_gives_the_same_shards_as_the_library(tmp_path, corpus_dir):
    library = prepare_dataset([corpus_dir], tmp_path / "library", workers=0, progress=False)
    fast = prepare_dataset([corpus_dir], tmp_path / "fast", workers=0, progress=False, fast_encode=True)
    assert _shard_bytes(fast) == _shard_bytes(library)
    assert json.loads((fast / "dataset.json").read_text())["args"]["fast_encode"] is True


@pytest.mark.slow
def test_worker_processes_give_the_same_shards(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 200)  # many chunks, so ordering across workers is exercised
    serial = prepare_dataset([corpus_dir], tmp_path / "serial", workers=0, progress=False)
    parallel = prepare_dataset([corpus_dir], tmp_path / "parallel", workers=2, progress=False)
    assert _shard_bytes(parallel) == _shard_bytes(serial)


def test_text_containing_the_eos_string_does_not_make_an_eos_id(tmp_path):
    (tmp_path / "in.txt").write_text("before <|endoftext|> after")
    out = prepare_dataset([tmp_path / "in.txt"], tmp_path / "ds", workers=0, progress=False)
    stream = np.fromfile(out / "tokens-00000.bin", dtype=np.uint16)
    assert np.flatnonzero(stream == 0).tolist() == [len(stream) - 1]


def test_empty_corpus_is_an_error_and_leaves_nothing(tmp_path, bad_dir):
    (tmp_path / "empty.jsonl").write_text('{"text": ""}\n{"other": "x"}\n')
    with pytest.raises(KilnError, match="no documents found .*empty_document: 1.*missing_text_field: 1"):
        prepare_dataset([tmp_path / "empty.jsonl"], tmp_path / "ds", workers=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl"]


def test_a_failure_half_way_leaves_no_dataset(tmp_path, corpus_dir, bad_dir):
    with pytest.raises(KilnError, match="truncated.jsonl.gz"):
        prepare_dataset([corpus_dir, bad_dir / "truncated.jsonl.gz"], tmp_path / "ds", workers=0, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path, corpus_dir):
    out = prepare_dataset([corpus_dir / "a_poem.txt"], tmp_path / "ds", workers=0, progress=False)
    with pytest.raises(KilnError, match="already exists; pass --overwrite"):
        prepare_dataset([corpus_dir], out, workers=0, progress=False)
    prepare_dataset([corpus_dir], out, workers=0, progress=False, overwrite=True)
    assert json.loads((out / "dataset.json").read_text())["num_documents"] == 15


def _big_vocab_tokenizer(path) -> None:
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"filler{i}": len(vocab) + i for i in range(70_000 - len(vocab) - 1)})
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))


def test_vocabulary_past_uint16_switches_to_uint32(tmp_path, corpus_dir):
    _big_vocab_tokenizer(tmp_path / "big.json")
    out = prepare_dataset([corpus_dir / "a_poem.txt"], tmp_path / "ds", tokenizer=tmp_path / "big.json", workers=0,
                          progress=False)
    ds = TokenDataset.open(out)
    assert ds.meta["dtype"] == "uint32" and ds.eos_id == 69_999 and ds.vocab_size == 70_000
    assert ds.document(0)[-1] == 69_999
    assert ds.meta["tokenizer"]["name"] == "big"


def test_prepare_command_prints_a_summary(tmp_path, corpus_dir, bad_dir, capsys):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", str(corpus_dir), str(bad_dir / "mixed.jsonl"), "--out", str(tmp_path / "d"),
                              "--workers", "0", "--no-progress", "--utf8-errors", "skip"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "17 documents" in out and "MB/s" in out and f"dataset: {tmp_path / 'd'}" in out
    assert "skipped/altered invalid_json: 1 (" in out and "invalid_utf8_skipped: 1" in out


def test_builtin_corpus_ships_with_the_package():
    docs = list(read_documents(prepare.BUILTIN_CORPUS_PATH))
    assert len(docs) == 42 and docs[0].startswith("ALL'S WELL THAT ENDS WELL")
    assert (prepare.BUILTIN_CORPUS_PATH.parent / "ATTRIBUTION.md").is_file()


def test_builtin_dataset_is_prepared_once_then_reused(tmp_path, corpus_dir, monkeypatch):
    monkeypatch.setattr(prepare, "BUILTIN_CORPUS_PATH", corpus_dir / "c_docs.jsonl")  # the real one takes seconds
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    first = builtin_dataset(progress=False)
    assert first.parent == tmp_path / "cache" / "datasets"
    assert first.name == f"builtin-{tokenizer_hash(load_tokenizer('builtin'))[:12]}"
    stamp = (first / "dataset.json").stat().st_mtime_ns
    assert builtin_dataset(progress=False) == first
    assert (first / "dataset.json").stat().st_mtime_ns == stamp
    assert TokenDataset.open(first).num_documents == 6
    assert json.loads((first / "dataset.json").read_text())["args"]["workers"] == 0  # no spawned workers to wait for


def test_the_default_spawns_workers_only_for_inputs_worth_their_start(tmp_path, monkeypatch):
    from kiln.data.prepare import WORKER_BYTES, default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_bytes(b"x" * (WORKER_BYTES - 1))
    big.write_bytes(b"x" * (WORKER_BYTES * 2))
    assert default_workers([small]) == 0 and default_workers([big]) == 2 and default_workers([big, big, big]) == 4
