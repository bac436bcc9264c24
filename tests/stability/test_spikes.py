import math

import numpy as np
import pytest

from kiln.stability.spikes import GrowthTracker, SpikeDetector, SpikeScore


def _count(values, window, k) -> list[int]:
    det = SpikeDetector(window, k)
    return [i for i, v in enumerate(values) if det.update(v)]


def test_no_spike_before_the_window_is_full():
    values = [1.0, 1.0, 1.0, 100.0, 1.0]
    assert _count(values, window=4, k=3) == []
    assert _count(values + [100.0], window=4, k=3) == []  # the window now holds 100, std is large


def test_exact_spike_positions_on_a_synthetic_series():
    rng = np.random.default_rng(0)
    values = list(1.0 + 0.01 * rng.standard_normal(400))
    for i in (150, 151, 300):
        values[i] = 5.0
    # Reference: the rule written out directly.
    expected = [i for i in range(128, 400)
                if values[i] > np.mean(values[i - 128:i]) + 6 * np.std(values[i - 128:i])]
    assert _count(values, window=128, k=6) == expected
    assert 150 in expected and 300 in expected


def test_k_and_window_change_the_count():
    series = [0.0, 1.0] * 20 + [1.6]  # any 10 previous values: mean 0.5, std 0.5
    assert _count(series, window=10, k=2) == [40]  # threshold 1.5
    assert _count(series, window=10, k=2.5) == []  # threshold 1.75


def test_non_finite_is_a_spike_but_never_enters_the_history():
    det = SpikeDetector(window=3, k=1)
    assert det.update(float("nan")) and det.update(float("inf"))
    assert list(det.history) == []


def test_spike_score_rolling_and_cumulative():
    score = SpikeScore(window=4)
    results = [score.update(s) for s in (True, False, False, False, False, True)]
    assert results[-1] == (pytest.approx(1 / 4), pytest.approx(2 / 6))
    assert results[3] == (pytest.approx(1 / 4), pytest.approx(1 / 4))


def test_growth_is_the_log_log_slope():
    growth = GrowthTracker(window=50, min_points=8)
    slope = None
    for step in range(1, 51):
        slope = growth.update(step, 3.0 * step**0.5)
    assert slope == pytest.approx(0.5, abs=1e-9)
    flat = GrowthTracker()
    assert [flat.update(s, 2.0) for s in range(1, 8)] == [None] * 7
    assert flat.update(8, 2.0) == pytest.approx(0.0, abs=1e-12)


def test_state_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    values = list(rng.standard_normal(60)) + [10.0, 0.1, 12.0]
    a = SpikeDetector(window=16, k=3)
    for v in values[:40]:
        a.update(v)
    b = SpikeDetector(window=2, k=1)
    b.load_state_dict(a.state_dict())
    assert [a.update(v) for v in values[40:]] == [b.update(v) for v in values[40:]]
    assert not math.isnan(a.history[-1])
