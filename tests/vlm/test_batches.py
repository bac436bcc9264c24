"""Rows of (image, question, answer) become batches whose loss falls on the answer alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.errors import KilnError
from kiln.train.loss import loss_terms
from kiln.vlm.batches import (
    IGNORE_INDEX,
    VLMLoader,
    collate,
    encode_example,
    load_dataset_tokenizer,
    object_labels,
    write_tokenizer,
)
from kiln.vlm.synth import SynthConfig, load_split, write_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vlm")
    write_dataset(SynthConfig(n=16, seed=3, size=48), out)
    write_tokenizer(out, load_split(out, "train"), vocab_size=300)
    return out


def test_the_dataset_tokenizer_spells_coordinates_one_digit_a_token(data):
    tok = load_dataset_tokenizer(data)
    answer = next(r["answer"] for r in load_split(data, "train") if r["points"])
    numbers = [t for t in tok.encode(answer).tokens if any(c.isdigit() for c in t)]
    assert numbers and all(len(t.lstrip("Ġ")) == 1 for t in numbers)
    assert tok.decode(tok.encode(answer).ids) == answer


def test_labels_are_the_answer_and_its_end_token_only(data):
    tok = load_dataset_tokenizer(data)
    record = load_split(data, "train")[0]
    ids, labels = encode_example(tok, record["question"], record["answer"])
    assert len(ids) == len(labels)
    targets = [t for t in labels if t != IGNORE_INDEX]
    assert tok.decode(targets[:-1]) == record["answer"] and targets[-1] == tok.token_to_id("<|endoftext|>")
    first = labels.index(targets[0])
    assert tok.decode(ids[:first + 1]) == record["question"] + "\n"  # what the model reads before answering
    assert labels[first:] == targets  # the answer is contiguous and runs to the end of the row
    assert ids[first + 1:] == targets[:-1]  # teacher forcing: each answer token is the next row's input


def test_loss_gradient_reaches_answer_positions_only(data):
    tok = load_dataset_tokenizer(data)
    records = load_split(data, "train")[:2]
    rows = [(torch.zeros(3, 48, 48), *encode_example(tok, r["question"], r["answer"])) for r in records]
    batch = collate(rows, pad_id=0)
    logits = torch.randn(*batch.input_ids.shape, 300, requires_grad=True)
    n = int((batch.labels != IGNORE_INDEX).sum())
    ce, z = loss_terms(logits, batch.labels, n, 1e-4)
    (ce + z).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, batch.labels != IGNORE_INDEX)  # question and padding positions get no gradient


def test_short_rows_are_padded_with_ignored_labels():
    rows = [(torch.zeros(3, 4, 4), [5, 6, 7], [IGNORE_INDEX, 7, 8]), (torch.ones(3, 4, 4), [5], [9])]
    batch = collate(rows, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 7, 8], [9, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch.images.shape == (2, 3, 4, 4) and batch.images[1].min() == 1


def test_a_resumed_loader_continues_with_the_batches_an_uninterrupted_one_gives(data):
    tok, records = load_dataset_tokenizer(data), load_split(data, "train")
    loader = VLMLoader(data, records, tok, batch_size=4, seed=1)
    stream = iter(loader)
    seen = [next(stream) for _ in range(len(records) // 4 + 2)]  # past an epoch's end
    state = loader.state_dict()
    expected = next(stream)
    again = VLMLoader(data, records, tok, batch_size=4, seed=1)
    again.load_state_dict(state)
    got = next(iter(again))
    assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.images, expected.images)
    assert not torch.equal(seen[0].input_ids, seen[len(records) // 4].input_ids)  # a new epoch, a new order


def test_an_evaluation_pass_reads_every_record_once_in_order(data):
    tok, records = load_dataset_tokenizer(data), load_split(data, "val")
    batches = list(VLMLoader(data, records, tok, batch_size=3, train=False))
    assert sum(len(b.input_ids) for b in batches) == len(records)
    first = encode_example(tok, records[0]["question"], records[0]["answer"])[0]
    assert batches[0].input_ids[0, :len(first)].tolist() == first


def test_a_loader_for_another_dataset_size_refuses_the_state(data):
    tok, records = load_dataset_tokenizer(data), load_split(data, "train")
    loader = VLMLoader(data, records[:-1], tok, batch_size=2)
    with pytest.raises(KilnError, match="the dataset changed"):
        loader.load_state_dict(VLMLoader(data, records, tok, batch_size=2).state_dict())


def test_a_loader_with_another_seed_refuses_the_state(data):
    tok, records = load_dataset_tokenizer(data), load_split(data, "train")
    with pytest.raises(KilnError, match="seed=1 but this loader has 2"):
        VLMLoader(data, records, tok, batch_size=2, seed=2).load_state_dict(
            VLMLoader(data, records, tok, batch_size=2, seed=1).state_dict())


def test_object_labels_mark_the_patch_holding_each_objects_point():
    record = {"objects": [{"colour": "red", "shape": "circle", "point": [10.0, 90.0]},  # column 0, row 3 of 4
                          {"colour": "blue", "shape": "star", "point": [60.0, 30.0]},  # column 2, row 1
                          {"colour": "green", "shape": "square", "point": [70.0, 45.0]},  # the same patch, on top
                          {"colour": "orange", "shape": "hexagon", "point": [100.0, 0.0]}]}  # the right edge
    labels = object_labels(record, grid=4)
    colours, shapes = ["red", "green", "blue", "yellow", "purple", "orange"], ["circle", "square", "triangle",
                                                                               "star", "diamond", "hexagon"]
    expected = torch.zeros(2, 4, 4, dtype=torch.long)
    expected[:, 3, 0] = torch.tensor([colours.index("red") + 1, shapes.index("circle") + 1])
    expected[:, 1, 2] = torch.tensor([colours.index("green") + 1, shapes.index("square") + 1])
    expected[:, 0, 3] = torch.tensor([colours.index("orange") + 1, shapes.index("hexagon") + 1])
    assert torch.equal(labels, expected)


def test_the_loader_adds_object_labels_only_when_asked(data):
    tok, records = load_dataset_tokenizer(data), load_split(data, "train")
    plain = next(iter(VLMLoader(data, records, tok, 3, train=False)))
    with_objects = next(iter(VLMLoader(data, records, tok, 3, train=False, object_grid=6)))
    assert plain.object_labels is None
    assert with_objects.object_labels.shape == (3, 2, 6, 6)
    for i in range(3):
        assert int((with_objects.object_labels[i, 0] > 0).sum()) <= len(records[i]["objects"])
        assert torch.equal(with_objects.object_labels[i], object_labels(records[i], 6))


def test_a_batch_knows_where_each_rows_question_ends(data):
    """`prompt_lens` (for a prefix LM) counts the tokens the model reads before answering, separator included."""
    from kiln.vlm.batches import SEPARATOR

    tok = load_dataset_tokenizer(data)
    records = load_split(data, "train")[:3]
    rows = [(torch.zeros(3, 48, 48), *encode_example(tok, r["question"], r["answer"])) for r in records]
    batch = collate(rows, pad_id=0)
    assert batch.prompt_lens.tolist() == [len(tok.encode(r["question"] + SEPARATOR).ids) for r in records]
    assert len(set(batch.prompt_lens.tolist())) > 1 or len({r["question"] for r in records}) == 1
