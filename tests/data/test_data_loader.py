from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from kiln.data.dataset import TokenDataset
from kiln.data.loader import InstanceLoader
from kiln.errors import KilnError

from .conftest import numbered_docs, write_dataset

SEQ = 16


@pytest.fixture
def dataset(tmp_path) -> TokenDataset:
    rng = np.random.default_rng(0)
    docs = [doc[: rng.integers(5, 60)] for doc in numbered_docs(40, 60)]
    return TokenDataset.open(write_dataset(tmp_path / "ds", docs, shard_tokens=256))


def _take(loader: InstanceLoader, count: int) -> list:
    return list(itertools.islice(iter(loader), count))


def _stream(ds: TokenDataset, loader: InstanceLoader) -> np.ndarray:
    """The split's token stream, rebuilt from the documents the loader's view selected."""
    view = loader.views[0]
    return np.concatenate([ds.tokens(int(s), int(s) + int(n)) for s, n in
                           zip(view.run_starts, np.diff(view.view_starts), strict=True)])


def test_instances_are_windows_of_the_stream_with_next_token_labels(dataset):
    loader = InstanceLoader(dataset, seq_len=SEQ, batch_size=4, val_fraction=0.0, repeat_filter=None)
    stream = _stream(dataset, loader)
    assert loader.instances_per_epoch == (dataset.num_tokens - 1) // SEQ
    for batch in _take(loader, 3):
        assert batch.input_ids.shape == batch.labels.shape == batch.doc_ids.shape == (4, SEQ)
        assert batch.input_ids.dtype == torch.int64
        for row, position in enumerate(batch.instance_ids.tolist()):
            _, instance = loader.locate(np.array([position]))
            window = stream[instance[0] * SEQ:instance[0] * SEQ + SEQ + 1]
            assert batch.input_ids[row].tolist() == window[:-1].tolist()
            assert batch.labels[row].tolist() == window[1:].tolist()


def test_doc_ids_start_a_new_segment_after_each_eos(dataset):
    batch = _take(InstanceLoader(dataset, seq_len=SEQ, batch_size=8, repeat_filter=None), 1)[0]
    assert torch.equal(batch.to("cpu").doc_ids, batch.doc_ids)
    for inputs, segments in zip(batch.input_ids.tolist(), batch.doc_ids.tolist(), strict=True):
        expected, current = [], 0
        for token in inputs:
            expected.append(current)
            current += token == 0
        assert segments == expected


def test_an_epoch_is_a_permutation_and_each_epoch_differs(dataset):
    loader = InstanceLoader(dataset, seq_len=SEQ, batch_size=1, seed=3, val_fraction=0.0)
    n = loader.instances_per_epoch
    firsts = [loader.locate(b.instance_ids.numpy())[1][0] for b in _take(loader, 2 * n)]
    assert sorted(firsts[:n]) == list(range(n)) == sorted(firsts[n:])
    assert firsts[:n] != firsts[n:] and loader.epoch == 2
    same = InstanceLoader(dataset, seq_len=SEQ, batch_size=1, seed=3, val_fraction=0.0)
    other = InstanceLoader(dataset, seq_len=SEQ, batch_size=1, seed=4, val_fraction=0.0)
    assert [b.input_ids.tolist() for b in _take(same, n)] == [b.input_ids.tolist() for b in _take(
        InstanceLoader(dataset, seq_len=SEQ, batch_size=1, seed=3, val_fraction=0.0), n)]
    assert [b.input_ids.tolist() for b in _take(same, 5)] != [b.input_ids.tolist() for b in _take(other, 5)]


def test_ranks_take_disjoint_slices_of_the_global_batch(dataset):
    whole = _take(InstanceLoader(dataset, seq_len=SEQ, batch_size=6, seed=1), 4)
    ranks = [_take(InstanceLoader(dataset, seq_len=SEQ, batch_size=2, seed=1, rank=r, world_size=3), 4)
             for r in range(3)]
    for step, batch in enumerate(whole):
        joined = torch.cat([ranks[r][step].input_ids for r in range(3)])
        assert torch.equal(joined, batch.input_ids)
        ids = torch.cat([ranks[r][step].instance_ids for r in range(3)]).tolist()
        assert len(set(ids)) == 6


def test_validation_documents_never_appear_in_training(dataset):
    train = InstanceLoader(dataset, seq_len=SEQ, batch_size=4, seed=0, val_fraction=0.2)
    val = InstanceLoader(dataset, seq_len=SEQ, batch_size=4, seed=9, split="val", val_fraction=0.2)
    doc_of = lambda tokens: set(((t - 1) // 100) for t in tokens.flatten().tolist() if t != 0)  # noqa: E731
    train_docs = set().union(*(doc_of(b.input_ids) for b in _take(train, 2 * train.instances_per_epoch // 4)))
    val_batches = list(val)
    val_docs = set().union(*(doc_of(b.input_ids) for b in val_batches))
    assert len(val_docs) == 8 and train_docs.isdisjoint(val_docs)
    assert sum(len(b.input_ids) for b in val_batches) == val.instances_per_epoch
    again = InstanceLoader(dataset, seq_len=SEQ, batch_size=4, seed=123, split="val", val_fraction=0.2)
    assert [b.input_ids.tolist() for b in again] == [b.input_ids.tolist() for b in val_batches]
    assert [b.input_ids.tolist() for b in val] == [b.input_ids.tolist() for b in val_batches]  # each pass restarts


def test_mixture_weights_are_realised_and_reported(tmp_path):
    big = TokenDataset.open(write_dataset(tmp_path / "a", numbered_docs(20, 200)))
    small = TokenDataset.open(write_dataset(tmp_path / "b", numbered_docs(5, 100, seed=1)))
    loader = InstanceLoader([big, small], seq_len=SEQ, batch_size=32, weights=[70, 30], val_fraction=0.0)
    batches = _take(loader, 200)
    sources = np.concatenate([loader.locate(b.instance_ids.numpy())[0] for b in batches])
    assert abs((sources == 1).mean() - 0.3) < 0.01
    stats = loader.stats()
    assert stats["target_shares"] == [0.7, 0.3]
    assert abs(stats["token_shares"][1] - 0.3) < 0.01 and stats["tokens"] == 200 * 32 * SEQ
    small_rows = torch.cat([b.input_ids for b in batches])[torch.from_numpy(sources == 1)]
    assert ((small_rows == 0) | (small_rows < 501)).all()  # instances of source 1 hold source 1's tokens


def test_mixture_refuses_bad_weights_and_foreign_tokenizers(tmp_path, dataset):
    other = write_dataset(tmp_path / "other", numbered_docs(3, 50))
    with pytest.raises(KilnError, match="2 mixture weights for 1 datasets"):
        InstanceLoader(dataset, seq_len=SEQ, batch_size=2, weights=[1, 2])
    meta = json.loads((other / "dataset.json").read_text())
    meta["tokenizer"]["hash"] = "f" * 64
    (other / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(KilnError, match="must share a tokenizer"):
        InstanceLoader([dataset, TokenDataset.open(other)], seq_len=SEQ, batch_size=2)
    with pytest.raises(KilnError, match="too few tokens for one instance"):
        InstanceLoader(dataset, seq_len=100_000, batch_size=2)


def test_repeated_ngrams_mask_the_labels_and_are_counted(tmp_path):
    docs = numbered_docs(6, 200)
    docs[2][50:120] = 7  # 70 repeats of one token
    ds = TokenDataset.open(write_dataset(tmp_path / "ds", docs))
    loader = InstanceLoader(ds, seq_len=64, batch_size=4, val_fraction=0.0)
    batches = _take(loader, loader.instances_per_epoch // 4)
    masked = [(b.labels[i] == -100).all().item() for b in batches for i in range(4)]
    repeats = [bool(((b.input_ids[i] == 7).sum() >= 33).item()) for b in batches for i in range(4)]
    assert any(masked) and masked == repeats
    assert loader.stats()["masked_instances"] == sum(masked)
    assert not any((b.labels == -100).any().item() for b in _take(
        InstanceLoader(ds, seq_len=64, batch_size=4, val_fraction=0.0, repeat_filter=None), 10))


@pytest.mark.parametrize("weights, world_size", [(None, 1), ([0.6, 0.4], 2)])
def test_resume_continues_exactly_at_the_next_unseen_batch(tmp_path, weights, world_size):
    paths = [write_dataset(tmp_path / "a", numbered_docs(30, 50)), write_dataset(tmp_path / "b", numbered_docs(9, 40))]
    make = lambda rank: InstanceLoader([TokenDataset.open(p) for p in paths], seq_len=SEQ, batch_size=3,  # noqa: E731
                                       seed=5, rank=rank, world_size=world_size, weights=weights)
    for rank in range(world_size):
        reference = _take(make(rank), 40 + 25)  # uninterrupted reader, crosses epochs
        first = make(rank)
        _take(first, 40)
        state = json.loads(json.dumps(first.state_dict()))
        resumed = make(rank)
        resumed.load_state_dict(state)
        for expected, actual in zip(reference[40:], _take(resumed, 25), strict=True):
            assert torch.equal(expected.input_ids, actual.input_ids)
            assert torch.equal(expected.labels, actual.labels)
            assert torch.equal(expected.instance_ids, actual.instance_ids)
        assert resumed.stats() == make_stats_after(make(rank), 65)


def make_stats_after(loader: InstanceLoader, count: int) -> dict:
    _take(loader, count)
    return loader.stats()


def test_state_from_other_settings_is_refused(dataset):
    state = InstanceLoader(dataset, seq_len=SEQ, batch_size=2, seed=1).state_dict()
    with pytest.raises(KilnError, match="loader state has seed=1 but this loader has 2"):
        InstanceLoader(dataset, seq_len=SEQ, batch_size=2, seed=2).load_state_dict(state)
