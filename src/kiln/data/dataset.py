"""Opening a prepared dataset folder: validate it against its `dataset.json`, then serve token ranges by slicing.

Every check names the file at fault, because a truncated shard or a dataset paired with the wrong tokenizer would
otherwise surface much later as a mysterious loss curve or an index error deep inside the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from kiln.data import shards
from kiln.data.tokenizer import check_same_tokenizer, load_tokenizer
from kiln.errors import KilnError

MAX_SCAN_TOKENS = 1 << 24  # ids are checked against the vocabulary in blocks of this many


@dataclass
class TokenDataset:
    """A read-only view of a dataset folder: memory-mapped shards, document offsets and the tokenizer's identity."""

    path: Path
    meta: dict = field(repr=False)
    shard_arrays: list[np.ndarray] = field(repr=False)
    shard_starts: np.ndarray = field(repr=False)  # (S + 1,) global offset of each shard's first token, then the total
    doc_starts: np.ndarray = field(repr=False)  # (D + 1,) global offset of each document's first token, then the total

    @classmethod
    def open(cls, path: str | Path, verify_ids: bool = True) -> TokenDataset:
        """Open and validate `path`; `verify_ids=False` skips the scan of every id against the vocabulary."""
        path = Path(path)
        meta = _read_meta(path)
        dtype = np.dtype(meta["dtype"])
        arrays = [_open_shard(path / entry["file"], entry["num_tokens"], dtype) for entry in meta["shards"]]
        shard_starts = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int64)
        if shard_starts[-1] != meta["num_tokens"]:
            raise KilnError(f"{path / shards.META_FILE} says num_tokens={meta['num_tokens']} but its shards "
                            f"hold {shard_starts[-1]}")
        dataset = cls(path, meta, arrays, shard_starts, _read_doc_starts(path, meta))
        if verify_ids:
            dataset._verify_ids()
        return dataset

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def num_tokens(self) -> int:
        return int(self.meta["num_tokens"])

    @property
    def num_documents(self) -> int:
        return int(self.meta["num_documents"])

    @property
    def tokenizer_hash(self) -> str:
        return self.meta["tokenizer"]["hash"]

    @cached_property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer stored in the folder, refused if it is not the one whose hash `dataset.json` records."""
        tok = load_tokenizer(self.path / self.meta["tokenizer"]["file"])
        check_same_tokenizer(self.tokenizer_hash, tok, f"the tokenizer file in {self.path}")
        return tok

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Ids [start, stop) of the global stream; a view when the range sits in one shard, else a copy."""
        shard = int(np.searchsorted(self.shard_starts, start, side="right")) - 1
        offset = start - int(self.shard_starts[shard])
        if stop <= self.shard_starts[shard + 1]:
            return self.shard_arrays[shard][offset:offset + stop - start]
        pieces = []
        while start < stop:
            end = min(stop, int(self.shard_starts[shard + 1]))
            pieces.append(self.shard_arrays[shard][start - self.shard_starts[shard]:end - self.shard_starts[shard]])
            start, shard = end, shard + 1
        return np.concatenate(pieces)

    def document(self, index: int) -> np.ndarray:
        """The ids of one document, its closing EOS included."""
        return self.tokens(int(self.doc_starts[index]), int(self.doc_starts[index + 1]))

    def _verify_ids(self) -> None:
        for array, entry in zip(self.shard_arrays, self.meta["shards"], strict=True):
            for block in range(0, len(array), MAX_SCAN_TOKENS):
                top = int(array[block:block + MAX_SCAN_TOKENS].max(initial=0))
                if top >= self.vocab_size:
                    raise KilnError(f"{self.path / entry['file']} holds token id {top}, past the tokenizer's "
                                    f"vocabulary of {self.vocab_size}; the shard is corrupt or from another "
                                    "tokenizer, so prepare the dataset again")


def _read_meta(path: Path) -> dict:
    meta_path = path / shards.META_FILE
    if not meta_path.is_file():
        hint = (" (a folder without it is an unfinished or failed `kiln prepare`)" if path.is_dir()
                else f"; make it with `kiln prepare INPUTS --out {path}` (a recipe's comments may say which inputs)")
        raise KilnError(f"not a kiln dataset: {meta_path} not found{hint}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise KilnError(f"{meta_path} is not valid JSON: {err}") from err
    if meta.get("format_version") != shards.FORMAT_VERSION:
        raise KilnError(f"{meta_path} has format_version {meta.get('format_version')!r}; this kiln reads "
                        f"version {shards.FORMAT_VERSION}")
    return meta


def _open_shard(file: Path, num_tokens: int, dtype: np.dtype) -> np.ndarray:
    if not file.is_file():
        raise KilnError(f"shard {file} is missing")
    expected = num_tokens * dtype.itemsize
    actual = file.stat().st_size
    if actual != expected:
        raise KilnError(f"shard {file} is {actual} bytes but dataset.json expects {num_tokens} {dtype.name} tokens "
                        f"= {expected} bytes; the file is truncated or was changed")
    if num_tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(file, dtype=dtype, mode="r", shape=(num_tokens,))


def _read_doc_starts(path: Path, meta: dict) -> np.ndarray:
    file = path / meta["documents_file"]
    if not file.is_file():
        raise KilnError(f"document index {file} is missing")
    starts = np.load(file, mmap_mode="r")
    valid = (len(starts) == meta["num_documents"] + 1 and starts[0] == 0 and starts[-1] == meta["num_tokens"]
             and bool(np.all(np.diff(starts) > 0)))
    if not valid:
        raise KilnError(f"document index {file} disagrees with dataset.json ({meta['num_documents']} documents, "
                        f"{meta['num_tokens']} tokens)")
    return np.asarray(starts)
