"""Spike forensics: what the model was reading when the loss or gradient norm spiked.

For each spike, RUN/spikes/stepNNNNNN.json holds the batch's instance ids (global positions in the data order,
with the source dataset and instance within it), each instance's decoded text, and its longest repeated n-gram.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def longest_repeat(tokens: np.ndarray, max_period: int = 13) -> dict[str, int]:
    """The longest run of one n-gram (period 1..max_period) repeated back to back: period, repeats, start."""
    best = {"period": 0, "repeats": 1, "start": 0}
    for period in range(1, min(max_period, len(tokens) // 2) + 1):
        same = np.concatenate([[False], tokens[period:] == tokens[:-period], [False]])
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        starts, ends = edges[::2], edges[1::2]
        if not len(starts):
            continue
        lengths = ends - starts
        i = int(lengths.argmax())
        repeats = 1 + int(lengths[i]) // period
        if repeats > best["repeats"]:
            best = {"period": period, "repeats": repeats, "start": int(starts[i])}
    return best


def describe_batch(micro_batches: list, tokenizer, locate, max_period: int = 13) -> list[dict[str, Any]]:
    """One record per instance of the step's micro-batches."""
    records = []
    for batch in micro_batches:
        ids = batch.instance_ids.numpy()
        sources, instances = locate(ids)
        for row, instance_id in enumerate(ids.tolist()):
            tokens = batch.input_ids[row].numpy()
            masked = bool((batch.labels[row] == -100).all())
            records.append({
                "instance_id": int(instance_id), "source": int(sources[row]), "instance": int(instances[row]),
                "masked_by_repeat_filter": masked, "longest_repeat": longest_repeat(tokens, max_period),
                "text": tokenizer.decode(tokens.tolist()) if tokenizer is not None else None,
            })
    return records


def save_spike(run_dir: Path, step: int, metrics: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    folder = run_dir / "spikes"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step{step:06d}.json"
    keep = {k: metrics.get(k) for k in ("loss", "grad_norm", "lr", "loss_spike", "grad_norm_spike", "skipped")}
    path.write_text(json.dumps({"step": step, "metrics": keep, "instances": records}, indent=1))
    return path
