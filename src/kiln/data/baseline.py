"""The unigram baseline: what a model that ignores context scores on the validation split, in nats per token.

A trained language model should land far below it; a run that does not has learned nothing but token frequencies.
"""

from __future__ import annotations

import numpy as np

from kiln.data.splits import SplitView

MAX_TOKENS = 50_000_000  # enough for stable frequencies; bounds the cost on huge datasets


def _stream(views: list[SplitView], limit: int) -> np.ndarray:
    parts, left = [], limit
    for view in views:
        take = min(view.num_tokens, left)
        if take > 0:
            parts.append(view.read(0, take))
            left -= take
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def unigram_cross_entropy(train_views: list[SplitView], val_views: list[SplitView], vocab_size: int) -> float:
    """Cross-entropy of add-one-smoothed train-split token frequencies on the val split (nats per token)."""
    counts = np.bincount(_stream(train_views, MAX_TOKENS).astype(np.int64), minlength=vocab_size).astype(np.float64)
    log_p = np.log(counts + 1.0) - np.log(counts.sum() + vocab_size)
    val = _stream(val_views, MAX_TOKENS).astype(np.int64)
    return float(-log_p[val].mean()) if len(val) else float("nan")
