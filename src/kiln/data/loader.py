"""Fixed-length training instances over prepared datasets, shuffled, mixed, split across ranks and resumable.

Instance i of a split is the `seq_len + 1` tokens starting at `i * seq_len` of that split's token stream (documents
joined by EOS), so consecutive instances share one token and every token but the first is a label exactly once.
The order of instances is a pure function of (seed, global position) (see `mixture.py`); the loader's whole state is
the position, which is why a resumed loader continues exactly where the saved one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from kiln.data.dataset import TokenDataset
from kiln.data.mixture import MixtureSchedule
from kiln.data.repeats import RepeatFilterConfig, repeated_ngram_rows
from kiln.data.splits import split_view
from kiln.errors import KilnError

__all__ = ["Batch", "InstanceLoader", "RepeatFilterConfig"]
IGNORE_INDEX = -100
STATE_VERSION = 1


@dataclass
class Batch:
    """One rank's micro-batch."""

    input_ids: torch.Tensor  # (B, T) int64
    labels: torch.Tensor  # (B, T) int64, the next token; IGNORE_INDEX for instances the repeat filter masks
    doc_ids: torch.Tensor  # (B, T) int64 segment of each input token in its instance; a token after EOS starts one
    instance_ids: torch.Tensor  # (B,) int64 global position of each instance; `InstanceLoader.locate` decodes it

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in
                       (self.input_ids, self.labels, self.doc_ids, self.instance_ids)))


class InstanceLoader:
    """Batches of training (or validation) instances from one dataset or a weighted mixture of several.

    split="train" iterates forever: each epoch is a new permutation keyed by (seed, epoch); with `weights`, each
    source is reshuffled on its own each time it is used up. split="val" is one pass in a fixed order that does not
    depend on the seed or the weights (it reads every source's validation documents in full); every `iter()` starts
    that pass again, and its last batch may be short (or absent on some ranks).
    Rank r of `world_size` takes rows [r * batch_size, (r + 1) * batch_size) of every global batch, and
    `instances_per_epoch` counts the instances of all ranks together.
    """

    def __init__(self, sources: TokenDataset | list[TokenDataset], *, seq_len: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, split: str = "train", val_fraction: float = 0.05,
                 weights: list[float] | None = None,
                 repeat_filter: RepeatFilterConfig | None = RepeatFilterConfig()):  # noqa: B008 - frozen default
        self.sources = [sources] if isinstance(sources, TokenDataset) else list(sources)
        _check_args(self.sources, seq_len, batch_size, rank, world_size)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.rank, self.world_size, self.split = rank, world_size, split
        self.weights = None if weights is None else list(weights)
        self.repeat_filter = repeat_filter or RepeatFilterConfig(enabled=False)
        self.eos_id = self.sources[0].eos_id
        self.views = [split_view(ds, split, val_fraction, min_tokens=seq_len + 1) for ds in self.sources]
        self.instance_counts = [max(0, (view.num_tokens - 1) // seq_len) for view in self.views]
        if sum(self.instance_counts) == 0:
            sizes = ", ".join(f"{ds.path}: {v.num_tokens}" for ds, v in zip(self.sources, self.views, strict=True))
            raise KilnError(f"the {split} split has too few tokens for one instance of seq_len + 1 = {seq_len + 1} "
                            f"({sizes}); use a shorter seq_len or more data")
        self.schedule = MixtureSchedule(self.instance_counts, self.weights, seed) if split == "train" else None
        self.val_offsets = np.concatenate([[0], np.cumsum(self.instance_counts)])
        self.instances_per_epoch = int(sum(self.instance_counts))
        self._position = 0  # global instances consumed, all ranks together
        self._reset_stats()

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def epoch(self) -> int:
        return self._position // self.instances_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        if self.split == "val":
            self._position = 0
        while self.split == "train" or self._position < self.instances_per_epoch:
            positions = self._position + self.rank * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
            if self.split == "val":
                positions = positions[positions < self.instances_per_epoch]
            self._position += self.global_batch_size
            if len(positions):
                yield self._make_batch(positions)

    def locate(self, instance_ids: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(source index, instance index within that source's split) of each global position."""
        positions = np.asarray(instance_ids, dtype=np.int64)
        if self.schedule is not None:
            return self.schedule.locate(positions)
        sources = np.searchsorted(self.val_offsets, positions, side="right") - 1
        return sources, positions - self.val_offsets[sources]

    def _make_batch(self, positions: np.ndarray) -> Batch:
        sources, instances = self.locate(positions)
        length = self.seq_len + 1
        rows = np.empty((len(positions), length), dtype=self.sources[0].shard_arrays[0].dtype)
        for row, (source, instance) in enumerate(zip(sources.tolist(), instances.tolist(), strict=True)):
            rows[row] = self.views[source].read(instance * self.seq_len, length)
        masked = repeated_ngram_rows(rows, self.repeat_filter)
        tokens = torch.from_numpy(rows.astype(np.int64))
        labels = tokens[:, 1:].clone()
        labels[torch.from_numpy(masked)] = IGNORE_INDEX
        inputs = tokens[:, :-1]
        is_eos = (inputs == self.eos_id).long()
        self._count(sources, masked)
        return Batch(input_ids=inputs.contiguous(), labels=labels, doc_ids=is_eos.cumsum(dim=1) - is_eos,
                     instance_ids=torch.from_numpy(positions.copy()))

    def _reset_stats(self) -> None:
        self._instances_per_source = np.zeros(len(self.sources), dtype=np.int64)
        self._masked_instances = 0

    def _count(self, sources: np.ndarray, masked: np.ndarray) -> None:
        self._instances_per_source += np.bincount(sources, minlength=len(self.sources))
        self._masked_instances += int(masked.sum())

    def stats(self) -> dict:
        """What this rank has read: token shares per source against the target, and repeat-filter counts."""
        tokens = self._instances_per_source * self.seq_len
        total = int(tokens.sum())
        target = self.schedule.weights if self.schedule is not None else np.asarray(self.instance_counts) / max(
            1, self.instances_per_epoch)
        return {
            "instances": int(self._instances_per_source.sum()), "tokens": total, "epoch": self.epoch,
            "tokens_per_source": tokens.tolist(),
            "token_shares": (tokens / total).tolist() if total else [0.0] * len(tokens),
            "target_shares": [float(w) for w in target],
            "masked_instances": self._masked_instances,
            "masked_fraction": self._masked_instances / max(1, int(self._instances_per_source.sum())),
        }

    def state_dict(self) -> dict:
        """Everything needed to continue with the next unseen batch, plus what must match to resume safely."""
        return {
            "version": STATE_VERSION, "position": self._position, "seed": self.seed, "seq_len": self.seq_len,
            "split": self.split, "weights": self.weights, "sources": self._fingerprint(),
            "instances_per_source": self._instances_per_source.tolist(), "masked_instances": self._masked_instances,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; refuses state from a different seed, seq_len, split, weights or data."""
        mine = self.state_dict()
        for key in ("version", "seed", "seq_len", "split", "weights", "sources"):
            if _normalise(state.get(key)) != _normalise(mine[key]):
                raise KilnError(f"loader state has {key}={state.get(key)!r} but this loader has {mine[key]!r}; "
                                "resume with the same data and settings")
        self._position = int(state["position"])
        self._instances_per_source = np.asarray(state["instances_per_source"], dtype=np.int64)
        self._masked_instances = int(state["masked_instances"])

    def _fingerprint(self) -> list[dict]:
        return [{"tokenizer": ds.tokenizer_hash, "num_tokens": ds.num_tokens, "num_documents": ds.num_documents}
                for ds in self.sources]


def _normalise(value: object) -> object:
    """Tuples and lists compare equal after a round trip through JSON or torch.save."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _check_args(sources: list[TokenDataset], seq_len: int, batch_size: int, rank: int, world_size: int) -> None:
    if not sources:
        raise KilnError("the loader needs at least one dataset")
    if seq_len < 1 or batch_size < 1:
        raise KilnError(f"seq_len and batch_size must be positive, got seq_len={seq_len}, batch_size={batch_size}")
    if not 0 <= rank < world_size:
        raise KilnError(f"rank must be in [0, world_size={world_size}), got {rank}")
    hashes = {ds.tokenizer_hash for ds in sources}
    if len(hashes) > 1:
        names = ", ".join(f"{ds.path} ({ds.tokenizer_hash[:12]})" for ds in sources)
        raise KilnError(f"datasets in one mixture must share a tokenizer, but they differ: {names}")
