"""The repeated n-gram filter of OLMo 2: instances holding a long run of one repeated n-gram are kept out of the loss.

Such runs ("the the the ...", table borders, repeated boilerplate) cause loss spikes. A run of `r` repeats of a
period-`p` n-gram is exactly a stretch where `x[i] == x[i + p]` holds for `p * (r - 1)` positions in a row, so each
period costs one comparison and one windowed sum over the batch, with no per-token Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.errors import KilnError

ALL_TRUE_WORD = np.frombuffer(np.ones(8, dtype=bool).tobytes(), dtype=np.uint64)[0]


@dataclass
class RepeatFilterConfig:
    """Mask an instance whose tokens hold any n-gram of period 1..max_period repeated min_repeats times in a row."""

    max_period: int = 13
    min_repeats: int = 32
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.max_period < 1 or self.min_repeats < 2:
            raise KilnError(f"repeat filter needs max_period >= 1 and min_repeats >= 2, got max_period="
                            f"{self.max_period}, min_repeats={self.min_repeats}")


def repeated_ngram_rows(tokens: np.ndarray, config: RepeatFilterConfig) -> np.ndarray:
    """(B,) bool: which rows of `tokens` (B, L) contain a repeated n-gram run that the filter rejects."""
    rows = np.zeros(tokens.shape[0], dtype=bool)
    if not config.enabled:
        return rows
    tokens = np.ascontiguousarray(tokens)
    length = tokens.shape[1]
    for period in range(1, config.max_period + 1):
        window = period * (config.min_repeats - 1)
        if window + period > length:
            break
        candidates = np.flatnonzero(~rows & _may_hold_run(tokens, period, window))
        if not len(candidates):
            continue
        same = tokens[candidates, period:] == tokens[candidates, :-period]  # (C, L - p)
        sums = np.zeros((len(candidates), same.shape[1] + 1), dtype=np.int32)
        np.cumsum(same, axis=1, dtype=np.int32, out=sums[:, 1:])
        rows[candidates] = ((sums[:, window:] - sums[:, :-window]) == window).any(axis=1)
    return rows


def _may_hold_run(tokens: np.ndarray, period: int, window: int) -> np.ndarray:
    """(B,) bool, a cheap superset of the rows whose `x[i] == x[i + period]` holds `window` times in a row.

    Such a run of at least 15 covers 8 aligned positions of the flattened comparison, i.e. one uint64 word of all-true
    bytes, so only words need checking; comparisons that straddle two rows only add candidates, never lose one.
    """
    if window < 15:
        return np.ones(tokens.shape[0], dtype=bool)
    flat = tokens.reshape(-1)
    same = flat[period:] == flat[:-period]
    words = same[:len(same) // 8 * 8].view(np.uint64)
    full = np.flatnonzero(words == ALL_TRUE_WORD) * 8
    rows = np.zeros(tokens.shape[0], dtype=bool)
    rows[full // tokens.shape[1]] = True
    rows[(full + 7) // tokens.shape[1]] = True
    return rows
