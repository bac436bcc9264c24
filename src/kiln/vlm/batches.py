"""Question/answer records -> batches of (images, token ids, labels) with the loss on the answer only.

A row is `question \\n answer <eos>` after the image tokens (which the model places before it). Labels are the next
token, -100 wherever that token belongs to the question or the separator, so the model is trained to answer, not
to ask; the <eos> after the answer is a target, so it learns when to stop. Rows are right-padded: under causal
attention padding after a row's end cannot change what comes before it.

The dataset folder carries its tokenizer (DIR/tokenizer.json), a byte-level BPE trained on its training text, as a
prepared text dataset does (`kiln prepare`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer

from kiln.data.tokenizer import eos_id, train_bpe
from kiln.errors import KilnError
from kiln.vlm.scenes import COLOURS, SHAPES

IGNORE_INDEX = -100
SEPARATOR = "\n"
TOKENIZER_FILE = "tokenizer.json"
STATE_VERSION = 1


@dataclass
class VLMBatch:
    """One micro-batch; `input_ids`, `labels` and `doc_ids` as the text trainer's `Batch` has them."""

    images: torch.Tensor  # (B, 3, H, W) float in [0, 1]
    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, IGNORE_INDEX off the answer
    doc_ids: torch.Tensor  # (B, T) zeros: a row is one document
    object_labels: torch.Tensor | None = None  # (B, 2, G, G) colour and shape class per patch (kiln.vlm.model)
    prompt_lens: torch.Tensor | None = None  # (B,) question tokens (separator included) of each row


def write_tokenizer(directory: str | Path, records: list[dict], vocab_size: int = 512) -> Tokenizer:
    """Train the dataset's BPE on its training questions and answers and save it in the folder. Digits are single
    tokens, so every coordinate is spelled digit by digit the same way."""
    tok = train_bpe((r["question"] + SEPARATOR + r["answer"] for r in records), vocab_size, split_digits=True)
    tok.save(str(Path(directory) / TOKENIZER_FILE))
    return tok


def load_dataset_tokenizer(directory: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(Path(directory) / TOKENIZER_FILE))


def encode_example(tok: Tokenizer, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one row: labels[i] is token i+1 when it is part of the answer or its <eos>."""
    prompt = tok.encode(question + SEPARATOR).ids
    reply = tok.encode(answer).ids + [eos_id(tok)]
    tokens = prompt + reply
    labels = [IGNORE_INDEX] * (len(prompt) - 1) + reply
    return tokens[:-1], labels


def load_image(path: str | Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1)


def object_class(colour: str, shape: str) -> tuple[int, int]:
    """The object head's (colour, shape) classes of an object; 0 in either means none."""
    return list(COLOURS).index(colour) + 1, SHAPES.index(shape) + 1


def object_labels(record: dict, grid: int) -> torch.Tensor:
    """(2, grid, grid): the colour and shape class (1-based; 0 = none) of the object whose point lies in each
    patch; where two points share a patch, the object drawn later (on top) wins."""
    labels = torch.zeros(2, grid, grid, dtype=torch.long)
    for obj in record["objects"]:
        x, y = obj["point"]
        col, row = min(int(x / 100 * grid), grid - 1), min(int(y / 100 * grid), grid - 1)
        labels[:, row, col] = torch.tensor(object_class(obj["colour"], obj["shape"]))
    return labels


def collate(rows: list[tuple[torch.Tensor, list[int], list[int]]], pad_id: int,
            objects: list[torch.Tensor] | None = None) -> VLMBatch:
    """Stack images; right-pad ids with `pad_id` and labels with IGNORE_INDEX to the longest row."""
    width = max(len(ids) for _, ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (_, row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)] = torch.tensor(row_ids)
        labels[i, :len(row_labels)] = torch.tensor(row_labels)
    images = torch.stack([image for image, _, _ in rows])
    prompt_lens = torch.tensor([prompt_length(row_labels) for _, _, row_labels in rows])
    return VLMBatch(images, ids, labels, torch.zeros_like(ids), torch.stack(objects) if objects else None,
                    prompt_lens)


def prompt_length(labels: list[int]) -> int:
    """Tokens of a row's question and separator: the separator is the first position whose label is answer."""
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX) + 1


class VLMLoader:
    """Batches of one split's records. split="train" runs forever, each epoch a permutation keyed by (seed, epoch);
    other splits are one pass in file order. `state_dict` holds the position, so a resumed run sees the same
    batches an uninterrupted one would. With `object_grid` G > 0 batches carry the G x G object labels."""

    def __init__(self, directory: str | Path, records: list[dict], tok: Tokenizer, batch_size: int, seed: int = 0,
                 train: bool = True, object_grid: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
        if not records:
            raise ValueError(f"no records to batch in {directory}")
        self.directory, self.records, self.tok = Path(directory), records, tok
        self.batch_size, self.seed, self.train, self.object_grid = batch_size, seed, train, object_grid
        self.pad_id = eos_id(tok)
        self.epoch = self.position = 0

    def __iter__(self) -> Iterator[VLMBatch]:
        if not self.train:
            for start in range(0, len(self.records), self.batch_size):
                yield self._batch(range(start, min(start + self.batch_size, len(self.records))))
            return
        while True:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.records))
            while self.position + self.batch_size <= len(order):
                rows = order[self.position:self.position + self.batch_size]
                self.position += self.batch_size
                yield self._batch(rows)
            self.epoch, self.position = self.epoch + 1, 0

    def _batch(self, indices: Iterable[int]) -> VLMBatch:
        records = [self.records[int(i)] for i in indices]
        rows = [(load_image(self.directory / r["image"]), *encode_example(self.tok, r["question"], r["answer"]))
                for r in records]
        objects = [object_labels(r, self.object_grid) for r in records] if self.object_grid else None
        return collate(rows, self.pad_id, objects)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position, "seed": self.seed,
                "records": len(self.records)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; refuses state from another loader version, seed or dataset, which would
        silently change the order of the rest of the run."""
        if state["records"] != len(self.records):
            raise KilnError(f"the checkpoint's loader read {state['records']} records, this split has "
                            f"{len(self.records)}: the dataset changed")
        for key, mine in (("version", STATE_VERSION), ("seed", self.seed)):
            if state.get(key) != mine:
                raise KilnError(f"loader state has {key}={state.get(key)!r} but this loader has {mine!r}; "
                                "resume with the same trainer.seed and kiln version")
        self.epoch, self.position = state["epoch"], state["position"]
