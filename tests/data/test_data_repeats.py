from __future__ import annotations

import numpy as np
import pytest

from kiln.data.repeats import RepeatFilterConfig, repeated_ngram_rows
from kiln.errors import KilnError


def _reference(row: np.ndarray, config: RepeatFilterConfig) -> bool:
    """Brute force: some n-gram of period p repeated min_repeats times back to back."""
    for period in range(1, config.max_period + 1):
        span = period * config.min_repeats
        for start in range(len(row) - span + 1):
            gram = row[start:start + period]
            if all(np.array_equal(row[start + k * period:start + (k + 1) * period], gram)
                   for k in range(config.min_repeats)):
                return True
    return False


def _plant(length: int, period: int, repeats: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    row = rng.integers(1000, 2000, size=length)
    gram = rng.integers(0, 50, size=period)
    row[17:17 + period * repeats] = np.tile(gram, repeats)
    return row


def test_olmo2_thresholds():
    config = RepeatFilterConfig()
    rows = np.stack([_plant(600, 1, 32), _plant(600, 1, 31), _plant(600, 13, 32), _plant(600, 14, 32),
                     _plant(600, 7, 33), np.random.default_rng(1).integers(0, 8192, size=600)])
    assert repeated_ngram_rows(rows, config).tolist() == [True, False, True, False, True, False]
    assert repeated_ngram_rows(rows, RepeatFilterConfig(enabled=False)).tolist() == [False] * 6
    assert repeated_ngram_rows(rows, RepeatFilterConfig(max_period=20, min_repeats=32))[3]


def test_matches_brute_force_on_random_rows():
    config = RepeatFilterConfig(max_period=4, min_repeats=4)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 3, size=(300, 40))  # a 3-letter alphabet makes short repeats common
    expected = [_reference(row, config) for row in rows]
    assert 0 < sum(expected) < len(expected)
    assert repeated_ngram_rows(rows, config).tolist() == expected


def test_bad_thresholds_are_refused():
    with pytest.raises(KilnError, match="min_repeats >= 2"):
        RepeatFilterConfig(min_repeats=1)


def test_runs_near_the_threshold_match_a_run_length_reference():
    config = RepeatFilterConfig()
    rng = np.random.default_rng(2)
    rows = rng.integers(0, 8192, size=(40, 700))
    for row in rows:  # plant one run per row of a random period and a repeat count around 32, anywhere in the row
        period, repeats = int(rng.integers(1, 15)), int(rng.integers(29, 35))
        if period * repeats < 700:
            start = int(rng.integers(0, 700 - period * repeats + 1))
            row[start:start + period * repeats] = np.tile(rng.integers(0, 50, size=period), repeats)

    def longest_periodic_run(row, period):
        best = current = 0
        for a, b in zip(row[period:], row[:-period], strict=True):
            current = current + 1 if a == b else 0
            best = max(best, current)
        return best

    expected = [any(longest_periodic_run(row, p) >= p * 31 for p in range(1, 14)) for row in rows]
    assert 5 < sum(expected) < 35
    assert repeated_ngram_rows(rows, config).tolist() == expected
