"""The ladder's fits on synthetic data from a known law: recovery, robustness, intervals, the optimum, sigmoid."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from kiln.ladder.fit import (
    LawFit,
    SigmoidFit,
    bootstrap,
    compute_optimal,
    fit_law,
    fit_sigmoid,
    interval,
    predict_interval,
)
from kiln.ladder.plots import plot_loss_vs_tokens, plot_predicted_vs_actual, plot_sigmoid

TRUE = LawFit(E=1.7, A=400.0, alpha=0.34, B=410.0, beta=0.28)  # Chinchilla-like values
HELD_OUT = (4e6, 1e8)  # 4x the largest N of the grid


def _grid(noise: float = 1e-3, seed: int = 0):
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e4, 1e6, 5), np.geomspace(1e5, 1e8, 5)))
    y = TRUE.predict(n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, n.size))
    return n, d, y


def test_fit_recovers_a_known_law_and_predicts_a_larger_model():
    n, d, y = _grid()
    fit = fit_law(n, d, y)
    # 0.1% noise on 25 points pins the exponents to a few hundredths and E to a few percent
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.03) and fit.beta == pytest.approx(TRUE.beta, abs=0.03)
    assert fit.E == pytest.approx(TRUE.E, rel=0.05)
    assert fit.predict(*HELD_OUT) == pytest.approx(TRUE.predict(*HELD_OUT), rel=5e-3)


def test_huber_loss_shrugs_off_an_outlier_that_moves_a_squared_loss_fit():
    n, d, y = _grid(noise=0.0)
    y[-1] *= 1.3  # the largest N at the longest D: the point a prediction leans on most
    truth = TRUE.predict(*HELD_OUT)
    robust = abs(fit_law(n, d, y).predict(*HELD_OUT) - truth) / truth
    squared = abs(fit_law(n, d, y, delta=10.0).predict(*HELD_OUT) - truth) / truth  # delta 10: quadratic throughout
    assert robust < 0.01 and robust < squared / 3


def test_bootstrap_interval_covers_the_truth_and_is_reproducible():
    n, d, y = _grid(noise=3e-3, seed=1)
    fit = fit_law(n, d, y)
    boots = bootstrap(n, d, y, samples=40, seed=3)
    value, lo, hi = predict_interval(fit, boots, *HELD_OUT, level=0.95)
    assert lo < hi and lo <= TRUE.predict(*HELD_OUT) <= hi
    again = bootstrap(n, d, y, samples=40, seed=3)
    assert [b.to_dict() for b in boots] == [b.to_dict() for b in again]


def test_interval_is_the_central_percentiles():
    assert interval(np.arange(101), level=0.9) == pytest.approx((5.0, 95.0))


def test_compute_optimal_matches_a_brute_force_search():
    flops = 1e20
    n_opt, d_opt = compute_optimal(TRUE, flops)
    assert 6 * n_opt * d_opt == pytest.approx(flops)
    ns = np.geomspace(1e6, 1e12, 400_001)
    brute = ns[np.argmin(TRUE.predict(ns, flops / 6 / ns))]
    assert n_opt == pytest.approx(brute, rel=1e-3)


def test_sigmoid_recovers_a_known_curve_above_chance():
    true = SigmoidFit(floor=0.25, a=0.5, k=-4.0, x0=2.0)
    x = np.linspace(1.0, 3.0, 20)
    fit = fit_sigmoid(x, true.predict(x), floor=0.25)
    assert fit.a == pytest.approx(0.5, rel=1e-3) and fit.k == pytest.approx(-4.0, rel=1e-3)
    assert fit.x0 == pytest.approx(2.0, abs=1e-3) and fit.floor == 0.25


def test_sigmoid_of_accuracies_at_chance_is_flat_at_the_floor():
    x = np.linspace(1.0, 3.0, 10)
    fit = fit_sigmoid(x, np.full(10, 0.25), floor=0.25)
    assert np.allclose(fit.predict(x), 0.25, atol=1e-3)


@pytest.mark.parametrize(("n", "d", "y", "message"), [
    ([1e4] * 4, [1e5] * 4, [3.0] * 4, "at least 5 points"),
    ([1e4, 2e4, 4e4, 8e4, -1], [1e5] * 5, [3.0] * 5, "every n must be positive"),
    ([1e4] * 5, [1e5] * 5, [3.0, 3.0, 3.0, 3.0, float("nan")], "every y must be positive and finite"),
    ([1e4] * 5, [1e5] * 6, [3.0] * 5, "differ in length"),
])
def test_bad_points_are_refused_naming_the_problem(n, d, y, message):
    with pytest.raises(ValueError, match=message):
        fit_law(n, d, y)


def test_plots_write_images(tmp_path):
    n, d, y = _grid()
    points = [{"n": a, "d": b, "value": c} for a, b, c in zip(n, d, y)]
    held = [{"n": 4e6, "d": 1e8, "value": float(TRUE.predict(4e6, 1e8))}]
    rows = [{"predicted": float(TRUE.predict(a, b)), "actual": c, "heldout": False} for a, b, c in zip(n, d, y)]
    rows.append({"predicted": 2.0, "actual": 2.02, "lo": 1.95, "hi": 2.05, "heldout": True, "label": "held"})
    x = np.linspace(1, 3, 10)
    paths = [plot_loss_vs_tokens(points, TRUE, tmp_path / "a.png", "loss", "val loss", heldout=held),
             plot_predicted_vs_actual(rows, tmp_path / "b.png", "pred"),
             plot_sigmoid(x, 0.25 + 0.1 * (x < 2), SigmoidFit(0.25, 0.1, -5, 2), tmp_path / "c.png", "acc",
                          heldout=[{"x": 1.5, "acc": 0.3}])]
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 400 and image.size[1] > 300
