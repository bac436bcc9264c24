"""The ladder's two fits, with scipy: a Chinchilla law L(N, D) and a sigmoid from task bpb to accuracy.

Step 1 follows Hoffmann et al. 2022 (Chinchilla), approach 3 (App. D.2): with a = log A, b = log B, e = log E,
minimise the Huber loss (delta 1e-3) of LSE(a - alpha log N, b - beta log D, e) - log L over the points, by L-BFGS
from a grid of starting points, keeping the best. Step 2 is Bhagia et al. 2024 (arXiv 2412.04403), Eq. 2: accuracy
= floor + a / (1 + exp(-k (bpb - x0))), here with the floor fixed at the task's chance accuracy.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares, minimize
from scipy.special import huber, logsumexp
from threadpoolctl import threadpool_limits

MIN_POINTS = 5  # the law has five parameters
# Hoffmann et al.'s grid of starting points: alpha, beta in {0, 0.5, ..., 2}, e in {-1, -0.5, ..., 1}, a, b in
# {0, 5, ..., 25}. Every grid point is scored (cheaply, all at once); L-BFGS starts from the best `LBFGS_STARTS`.
EXPONENT_STARTS, E_STARTS = (0.0, 0.5, 1.0, 1.5, 2.0), (-1.0, -0.5, 0.0, 0.5, 1.0)
LOG_COEF_STARTS = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
LBFGS_STARTS = 20
BOUNDS = [(-20.0, 60.0), (-20.0, 60.0), (-10.0, 10.0), (0.0, 3.0), (0.0, 3.0)]  # a, b, e, alpha, beta


def _one_blas_thread(func):
    """L-BFGS-B calls BLAS on 5-vectors; BLAS threads spinning beside a busy CPU (training runs) make it ~10x
    slower, so every fit runs on one BLAS thread."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with threadpool_limits(limits=1):
            return func(*args, **kwargs)
    return wrapper


@dataclass
class LawFit:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def predict(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> LawFit:
        return cls(**{key: float(data[key]) for key in ("E", "A", "alpha", "B", "beta")})


def _check_points(n: np.ndarray, d: np.ndarray, y: np.ndarray) -> None:
    if not len(n) == len(d) == len(y):
        raise ValueError(f"n, d and y differ in length ({len(n)}, {len(d)}, {len(y)})")
    if len(n) < MIN_POINTS:
        raise ValueError(f"a law of 5 parameters needs at least {MIN_POINTS} points, got {len(n)}")
    for name, values in (("n", n), ("d", d), ("y", y)):
        if not (np.all(np.isfinite(values)) and np.all(values > 0)):
            raise ValueError(f"every {name} must be positive and finite, got {values.tolist()}")


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_y: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Summed Huber loss of the log residuals and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    log_pred = logsumexp(terms, axis=0)
    r = log_pred - log_y
    weights = np.exp(terms - log_pred)  # d log_pred / d term
    slope = np.clip(r, -delta, delta)  # d huber / d r
    grad = np.array([slope @ weights[0], slope @ weights[1], slope @ weights[2],
                     -(slope * weights[0]) @ log_n, -(slope * weights[1]) @ log_d])
    return float(huber(delta, r).sum()), grad


def _grid() -> np.ndarray:
    """(G, 5) starting points (a, b, e, alpha, beta)."""
    return np.array([[a, b, e, alpha, beta] for alpha, beta, e, a, b in
                     itertools.product(EXPONENT_STARTS, EXPONENT_STARTS, E_STARTS, LOG_COEF_STARTS, LOG_COEF_STARTS)])


def _best_of_grid(grid: np.ndarray, log_n, log_d, log_y, delta: float, keep: int) -> list[np.ndarray]:
    """The `keep` grid points with the lowest objective, scored in one vectorised pass."""
    a, b, e, alpha, beta = (grid[:, i:i + 1] for i in range(5))
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, (len(grid), len(log_n)))])
    loss = huber(delta, logsumexp(terms, axis=0) - log_y).sum(axis=1)
    return list(grid[np.argsort(loss)[:keep]])


def _best_fit(starts: list[np.ndarray], log_n, log_d, log_y, delta: float) -> LawFit:
    best = None
    for start in starts:
        result = minimize(_objective, start, args=(log_n, log_d, log_y, delta), jac=True, method="L-BFGS-B",
                          bounds=BOUNDS)
        if best is None or result.fun < best.fun:
            best = result
    a, b, e, alpha, beta = best.x
    return LawFit(E=float(np.exp(e)), A=float(np.exp(a)), alpha=float(alpha), B=float(np.exp(b)), beta=float(beta))


def _theta(fit: LawFit) -> np.ndarray:
    return np.array([np.log(fit.A), np.log(fit.B), np.log(fit.E), fit.alpha, fit.beta])


@_one_blas_thread
def fit_law(n, d, y, delta: float = 1e-3, starts: list[np.ndarray] | None = None) -> LawFit:
    """The law through (N, D, loss) points; `starts` are (a, b, e, alpha, beta) vectors (default: the best of the
    grid)."""
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, y))
    _check_points(n, d, y)
    log_n, log_d, log_y = np.log(n), np.log(d), np.log(y)
    if starts is None:
        starts = _best_of_grid(_grid(), log_n, log_d, log_y, delta, LBFGS_STARTS)
    return _best_fit(starts, log_n, log_d, log_y, delta)


@_one_blas_thread
def bootstrap(n, d, y, samples: int = 200, seed: int = 0, delta: float = 1e-3) -> list[LawFit]:
    """The law refitted on `samples` resamples of the points (with replacement), each started near the full fit."""
    n, d, y = (np.asarray(v, dtype=float) for v in (n, d, y))
    full = _theta(fit_law(n, d, y, delta))
    starts = [full, full + [0, 0, 0, 0.15, 0.15], full - [0, 0, 0, 0.15, 0.15]]
    rng = np.random.default_rng(seed)
    fits = []
    for _ in range(samples):
        idx = rng.integers(0, len(n), len(n))
        if len(set(idx.tolist())) < MIN_POINTS:
            continue
        fits.append(_best_fit(starts, np.log(n[idx]), np.log(d[idx]), np.log(y[idx]), delta))
    return fits


def interval(values, level: float = 0.9) -> tuple[float, float]:
    """The central `level` percentile interval."""
    values = np.asarray(values, dtype=float)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def predict_interval(fit: LawFit, boots: list[LawFit], n: float, d: float,
                     level: float = 0.9) -> tuple[float, float, float]:
    """The full fit's prediction and the bootstrap interval around it."""
    lo, hi = interval([b.predict(n, d) for b in boots], level)
    return float(fit.predict(n, d)), lo, hi


def compute_optimal(fit: LawFit, flops: float) -> tuple[float, float]:
    """N and D minimising L(N, D) at C = 6 N D (Hoffmann et al. 2022, Eq. 4)."""
    a, b = fit.alpha, fit.beta
    g = (a * fit.A / (b * fit.B)) ** (1 / (a + b))
    return g * (flops / 6) ** (b / (a + b)), (flops / 6) ** (a / (a + b)) / g


@dataclass
class SigmoidFit:
    """accuracy = floor + a / (1 + exp(-k (x - x0))), x the task bpb; k < 0, so accuracy falls as bpb rises."""

    floor: float
    a: float
    k: float
    x0: float

    def predict(self, x):
        return self.floor + self.a / (1 + np.exp(np.clip(-self.k * (np.asarray(x, dtype=float) - self.x0), -50, 50)))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> SigmoidFit:
        return cls(**{key: float(data[key]) for key in ("floor", "a", "k", "x0")})


@_one_blas_thread
def fit_sigmoid(x, acc, floor: float) -> SigmoidFit:
    """Least squares from a few starts; points all at chance give a flat fit, not an error."""
    x, acc = np.asarray(x, dtype=float), np.asarray(acc, dtype=float)
    span = max(float(np.ptp(x)), 1e-6)
    ceiling = max(1.0 - floor, 1e-6)
    lower, upper = [1e-6, -50.0 / span, x.min() - 3 * span], [ceiling, -1e-3 / span, x.max() + 3 * span]
    residual = lambda p: floor + p[0] / (1 + np.exp(np.clip(-p[1] * (x - p[2]), -50, 50))) - acc
    best = None
    for x0, k in itertools.product(np.quantile(x, [0.25, 0.5, 0.75]), (-1.0 / span, -5.0 / span)):
        a0 = float(np.clip(acc.max() - floor, 2e-6, ceiling - 1e-7))
        result = least_squares(residual, [a0, k, x0], bounds=(lower, upper))
        if best is None or result.cost < best.cost:
            best = result
    a, k, x0 = best.x
    return SigmoidFit(floor=float(floor), a=float(a), k=float(k), x0=float(x0))


@_one_blas_thread
def bootstrap_sigmoid(x, acc, floor: float, samples: int = 200, seed: int = 0) -> list[SigmoidFit]:
    """The sigmoid refitted on resamples of the points."""
    x, acc = np.asarray(x, dtype=float), np.asarray(acc, dtype=float)
    rng = np.random.default_rng(seed)
    return [fit_sigmoid(x[idx], acc[idx], floor) for idx in (rng.integers(0, len(x), len(x)) for _ in range(samples))]
