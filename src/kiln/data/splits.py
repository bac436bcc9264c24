"""Train/validation split by whole documents, and a contiguous view of one split's tokens.

Validation documents are chosen by a hash of the document index, not by the training seed, so the validation set is
the same for every run on a dataset and no document is ever in both splits.
"""

from __future__ import annotations

import numpy as np

from kiln.data.dataset import TokenDataset
from kiln.errors import KilnError

SPLITS = ("train", "val")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A well-mixed 64-bit hash of each value (uint64 arithmetic wraps, which is the point)."""
    x = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def val_document_mask(num_documents: int, val_fraction: float) -> np.ndarray:
    """(D,) bool: the documents held out for validation, at least one when asked for, never all of them."""
    if not 0.0 <= val_fraction < 1.0:
        raise KilnError(f"val_fraction must be in [0, 1), got {val_fraction}")
    mask = np.zeros(num_documents, dtype=bool)
    if val_fraction == 0.0 or num_documents < 2:
        return mask
    count = min(max(1, round(val_fraction * num_documents)), num_documents - 1)
    keys = _splitmix64(np.arange(num_documents, dtype=np.uint64))
    mask[np.argpartition(keys, count - 1)[:count]] = True
    return mask


class SplitView:
    """The documents of one split laid end to end as one token stream, read by slicing runs of adjacent documents."""

    def __init__(self, dataset: TokenDataset, documents: np.ndarray):
        selected = np.flatnonzero(documents)
        breaks = np.flatnonzero(np.diff(selected) != 1) + 1
        first = selected[np.concatenate([[0], breaks])] if len(selected) else selected
        last = selected[np.concatenate([breaks - 1, [len(selected) - 1]])] if len(selected) else selected
        self._set_runs(dataset, dataset.doc_starts[first], dataset.doc_starts[last + 1])
        self.num_documents = len(selected)

    @classmethod
    def token_range(cls, dataset: TokenDataset, start: int, stop: int) -> SplitView:
        """Tokens [start, stop) of the dataset's stream as one run: a split inside a single document."""
        view = cls.__new__(cls)
        view._set_runs(dataset, np.array([start]), np.array([stop]))
        view.num_documents = 1 if stop > start else 0
        return view

    def _set_runs(self, dataset: TokenDataset, run_starts: np.ndarray, run_stops: np.ndarray) -> None:
        self.dataset = dataset
        self.run_starts = np.asarray(run_starts, dtype=np.int64)  # (R,) position in the dataset's stream
        lengths = np.asarray(run_stops, dtype=np.int64) - self.run_starts
        self.view_starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (R + 1,) position in the view
        self.num_tokens = int(self.view_starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the view."""
        run = int(np.searchsorted(self.view_starts, start, side="right")) - 1
        stop = start + length
        if stop <= self.view_starts[run + 1]:
            begin = int(self.run_starts[run]) + start - int(self.view_starts[run])
            return self.dataset.tokens(begin, begin + length)
        pieces = []
        while start < stop:
            end = min(stop, int(self.view_starts[run + 1]))
            begin = int(self.run_starts[run]) + start - int(self.view_starts[run])
            pieces.append(self.dataset.tokens(begin, begin + end - start))
            start, run = end, run + 1
        return np.concatenate(pieces)


def held_out_tail(dataset: TokenDataset, val_fraction: float, min_tokens: int = 1) -> int:
    """Tokens held out from the end of a one-document dataset for validation (0 when there is no such split):
    the last `val_fraction` of them, but at least `min_tokens` (one instance) while half the document is left."""
    if dataset.num_documents != 1 or val_fraction == 0.0:
        return 0
    return min(max(min_tokens, round(val_fraction * dataset.num_tokens)), max(1, dataset.num_tokens // 2))


def split_view(dataset: TokenDataset, split: str, val_fraction: float, min_tokens: int = 1) -> SplitView:
    """The train or val documents of `dataset`; a one-document dataset splits its tokens instead (the last
    `val_fraction` of them are validation), since whole documents cannot be held out of it."""
    if split not in SPLITS:
        raise KilnError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    tail = held_out_tail(dataset, val_fraction, min_tokens)
    if tail:
        cut = dataset.num_tokens - tail
        return SplitView.token_range(dataset, cut, dataset.num_tokens) if split == "val" else \
            SplitView.token_range(dataset, 0, cut)
    val = val_document_mask(dataset.num_documents, val_fraction)
    if split == "val" and not val.any():
        raise KilnError(f"dataset {dataset.path} has no validation documents: data.val_fraction={val_fraction}; "
                        "set data.val_fraction above 0 for a validation split, or 0 to train without one")
    return SplitView(dataset, val if split == "val" else ~val)
