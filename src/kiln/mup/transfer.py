"""Does the optimal learning rate transfer across width, and how does it move with duration?

Reads a `kiln sweep` folder (one run per LR x width x parametrization x duration x seed), fits the optimal LR of
each loss-vs-LR curve, and measures how far it moves across widths (it should stay put under muP and shrink about
as 1/width under standard parametrization with Adam) and how it scales with tokens trained, LR*(D) = B * D^-beta.
The tables and plots are kiln.mup.report's.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from kiln.errors import KilnError
from kiln.experiments.runlog import read_run, summarize
from kiln.experiments.sweep_progress import LOG_FILE
from kiln.model.config import VOCAB_MULTIPLE
from kiln.train.config import TrainConfig, load_config
from kiln.train.metrics_log import METRICS_FILE

CONFIG_FILE = "config.yaml"
NONFINITE_LOSS = re.compile(r"loss is -?(nan|inf)\b")  # how kiln train reports the loss that stopped it
REPORT_DIR = "mup"
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
SEED_BOOTSTRAP_SAMPLES = 500  # redraws of the seeds per curve, when the sweep ran 2 or more
FIT_HALF_WIDTH = 2  # grid points each side of the best one used by the quadratic fit
PARAM_ORDER = {"standard": 0, "mup": 1}
PARAM_TITLES = {"standard": "standard", "mup": "muP"}
TRANSFER_COLUMNS = ["parametrization", "d_model", "tokens", "best_grid_lr", "optimal_lr", "optimal_lr_16",
                    "optimal_lr_84", "loss_at_optimum", "at_edge", "n_seeds", "n_lrs", "n_diverged"]


@dataclass
class Point:
    """One run of the sweep; val_loss is None when it diverged (no finite final val loss, or stopped early)."""

    run: Path
    parametrization: str
    d_model: int
    tokens: int
    lr: float
    seed: int
    val_loss: float | None


@dataclass
class Curve:
    """Seed-averaged final val loss per LR at one (parametrization, width, duration); NaN marks a diverged LR."""

    parametrization: str
    d_model: int
    tokens: int
    lrs: np.ndarray
    losses: np.ndarray
    seed_losses: list[np.ndarray]  # per LR, one final val loss per seed (NaN: that seed diverged)

    @property
    def n_seeds(self) -> int:
        return min(seeds.size for seeds in self.seed_losses)

    @property
    def n_diverged(self) -> int:
        return int(np.isnan(self.losses).sum())

    def optimum(self) -> Optimum | None:
        """None when every LR diverged: there is nothing to fit."""
        return fit_optimum(self.lrs, self.losses) if self.n_diverged < len(self.lrs) else None


@dataclass
class Optimum:
    """A curve's optimal LR; when at_edge, the best grid point is an end of the grid and lr only a bound."""

    lr: float
    loss: float
    best_grid_lr: float
    at_edge: bool
    n_points: int  # points in the quadratic fit; 1 = no fit (too few finite points or non-convex), best grid point


@dataclass
class DurationFit:
    """LR*(D) = B * D^-beta at one width and parametrization; rows hold D, optimal_lr, best_grid_lr, at_edge, sigma."""

    d_model: int
    parametrization: str
    rows: list[dict[str, Any]]
    beta: float
    beta_stderr: float | None
    beta_boot_std: float
    beta_interval: tuple[float, float]
    B: float
    bootstrap: str = ""  # what the bootstrap redrew


# ---- reading the sweep ----

def collect_points(sweep_dir: str | Path, unfinished: list[Path] | None = None) -> list[Point]:
    """One Point per run folder (a subfolder with both metrics.jsonl and config.yaml; others are skipped).

    A run that stopped short of trainer.steps diverged when its train.log says the loss went non-finite; any other
    (still running, or killed) is left out and appended to `unfinished`, so a report of a running sweep shows it.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise KilnError(f"sweep folder {sweep_dir} does not exist")
    runs = [p for p in sorted(sweep_dir.iterdir()) if (p / METRICS_FILE).is_file() and (p / CONFIG_FILE).is_file()]
    if not runs:
        raise KilnError(f"{sweep_dir} has no run folders (subfolders with {METRICS_FILE} and {CONFIG_FILE}); "
                        "give the folder `kiln sweep` wrote")
    points = {run: _read_point(run) for run in runs}
    if unfinished is not None:
        unfinished.extend(run for run, point in points.items() if point is None)
    return [point for point in points.values() if point is not None]


def _read_config(run: Path) -> TrainConfig:
    """The run's resolved config (a preset and its overrides, or plain fields), read as `kiln train` reads a recipe."""
    try:
        return load_config(run / CONFIG_FILE)
    except KilnError as err:
        raise KilnError(f"{run / CONFIG_FILE}: {err}") from err


def _stopped_by_nonfinite_loss(run: Path) -> bool:
    log = run / LOG_FILE
    return log.is_file() and NONFINITE_LOSS.search(log.read_text(errors="replace")) is not None


def _read_point(run: Path) -> Point | None:
    """The run's settings and final val loss (None: diverged); None for a run unfinished for another reason."""
    cfg = _read_config(run)
    model = cfg.model.build(vocab_size=cfg.model.overrides.get("vocab_size", VOCAB_MULTIPLE))
    summary = summarize(read_run(run))
    planned = cfg.trainer.steps
    last_step, tokens, val = summary["steps"], summary["tokens"], summary["final_val_loss"]
    finished = last_step is not None and last_step >= planned
    if not finished and not _stopped_by_nonfinite_loss(run):
        return None
    # the planned duration, so an early-stopped run joins its siblings' curve (`kiln sweep` runs one process each)
    tokens = round(tokens * planned / last_step) if tokens and last_step else planned * cfg.tokens_per_step
    return Point(run=run, parametrization=model.parametrization, d_model=model.d_model, tokens=tokens,
                 lr=cfg.optim.lr, seed=cfg.trainer.seed,
                 val_loss=float(val) if finished and val is not None and math.isfinite(val) else None)


def parametrization_order(name: str) -> tuple[int, str]:
    """Sort key: standard before muP, then any other name."""
    return PARAM_ORDER.get(name, len(PARAM_ORDER)), name


def group_curves(points: Sequence[Point]) -> list[Curve]:
    """One curve per (parametrization, d_model, tokens); seeds averaged, and an LR diverged if any seed did."""
    groups: dict[tuple[str, int, int], dict[float, list[float | None]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        groups[(p.parametrization, p.d_model, p.tokens)][p.lr].append(p.val_loss)
    curves = []
    for (param, width, tokens), by_lr in groups.items():
        lrs = np.array(sorted(by_lr))
        losses = np.array([np.nan if None in by_lr[lr] else float(np.mean(by_lr[lr])) for lr in lrs])
        seed_losses = [np.array([np.nan if v is None else v for v in by_lr[lr]], dtype=float) for lr in lrs]
        curves.append(Curve(param, width, tokens, lrs, losses, seed_losses))
    return sorted(curves, key=lambda c: (parametrization_order(c.parametrization), c.tokens, c.d_model))


def grid_factor(points: Sequence[Point]) -> float:
    """Median ratio of consecutive LRs within each curve, i.e. the sweep's grid step as a factor."""
    ratios = np.concatenate([c.lrs[1:] / c.lrs[:-1] for c in group_curves(points)])
    if ratios.size == 0:
        raise KilnError("no curve of the sweep has two learning rates; sweep optim.lr over a grid")
    return float(np.median(ratios))


# ---- the optimum of one curve ----

def fit_optimum(lrs: Sequence[float], losses: Sequence[float | None]) -> Optimum:
    """Optimal LR from a quadratic in log2(LR) through the best finite point and up to 2 neighbours each side.

    Why quadratic in log LR: near its minimum, loss vs log LR is roughly a parabola, the standard model behind
    muP/TP5 LR-transfer plots and the LR scans of OLMo and Bjorck et al.; a vertex between grid points resolves the
    optimum finer than the grid. The vertex is clamped to the fitted points' LR range (no extrapolation). A diverged
    LR (None/NaN/inf) counts as worse than any finite one and is left out of the fit.
    """
    lrs_arr = np.asarray(lrs, dtype=float)
    loss_arr = np.array([np.nan if v is None else v for v in losses], dtype=float)
    if lrs_arr.shape != loss_arr.shape or np.any(lrs_arr <= 0):
        raise ValueError(f"need matching positive lrs and losses, got lrs={list(lrs)} losses={list(losses)}")
    order = np.argsort(lrs_arr)
    lrs_arr, loss_arr = lrs_arr[order], np.where(np.isfinite(loss_arr[order]), loss_arr[order], np.nan)
    finite = np.flatnonzero(~np.isnan(loss_arr))
    if finite.size == 0:
        raise ValueError(f"every LR diverged: {list(lrs)}")
    best = int(finite[np.argmin(loss_arr[finite])])
    at_edge = best in (0, len(lrs_arr) - 1)
    fallback = Optimum(float(lrs_arr[best]), float(loss_arr[best]), float(lrs_arr[best]), at_edge, 1)
    window = _fit_window(finite, best)
    if window.size < 3:
        return fallback
    x, y = np.log2(lrs_arr[window]), loss_arr[window]
    curvature, slope, intercept = np.polyfit(x, y, 2)
    if curvature <= 0:
        return fallback
    vertex = float(np.clip(-slope / (2 * curvature), x.min(), x.max()))
    loss = float(np.polyval([curvature, slope, intercept], vertex))
    return Optimum(float(2.0**vertex), loss, float(lrs_arr[best]), at_edge, int(window.size))


def _fit_window(finite: np.ndarray, best: int) -> np.ndarray:
    """Indices of the best finite point and up to FIT_HALF_WIDTH finite neighbours each side (3+ when 3+ exist)."""
    i = int(np.searchsorted(finite, best))
    return finite[max(0, i - FIT_HALF_WIDTH):i + FIT_HALF_WIDTH + 1]


def resampled_optima(curve: Curve, rng: np.random.Generator, n: int = SEED_BOOTSTRAP_SAMPLES) -> np.ndarray:
    """Optimal LRs of `n` copies of the curve whose seeds are redrawn with replacement at each LR (NaN where every
    LR of a copy diverged): how much the optimum owes to which seeds were run."""
    out = np.full(n, np.nan)
    for i in range(n):
        losses = np.array([rng.choice(seeds, size=seeds.size).mean() for seeds in curve.seed_losses])
        if np.isfinite(losses).any():
            out[i] = fit_optimum(curve.lrs, losses).lr
    return out


def optimum_interval(curve: Curve, rng: np.random.Generator) -> tuple[float | None, float | None]:
    """16th and 84th percentiles of the seed-resampled optimum; (None, None) with fewer than 2 seeds."""
    if curve.n_seeds < 2:
        return None, None
    optima = resampled_optima(curve, rng)
    optima = optima[np.isfinite(optima)]
    return (float(np.percentile(optima, 16)), float(np.percentile(optima, 84))) if optima.size else (None, None)


# ---- width transfer ----

def transfer_table(points: Sequence[Point]) -> list[dict[str, Any]]:
    """One row per (parametrization, tokens, d_model) with its fitted optimum; optimum columns None if all diverged."""
    rows, rng = [], np.random.default_rng(BOOTSTRAP_SEED)
    for curve in group_curves(points):
        opt = curve.optimum()
        low, high = optimum_interval(curve, rng)
        fitted = ({"best_grid_lr": opt.best_grid_lr, "optimal_lr": opt.lr, "loss_at_optimum": opt.loss,
                   "at_edge": opt.at_edge} if opt else dict.fromkeys(("best_grid_lr", "optimal_lr", "loss_at_optimum",
                                                                         "at_edge")))
        rows.append({"parametrization": curve.parametrization, "d_model": curve.d_model, "tokens": curve.tokens,
                     **fitted, "optimal_lr_16": low, "optimal_lr_84": high, "n_seeds": curve.n_seeds,
                     "n_lrs": len(curve.lrs), "n_diverged": curve.n_diverged})
    return rows


def _fitted(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["optimal_lr"] is not None]


def shift_in_grid_steps(rows: Sequence[dict[str, Any]], grid_factor: float) -> float:
    """How far the optimal LR moves across the rows (one parametrization, one duration), in grid steps."""
    if not grid_factor > 1:
        raise ValueError(f"grid_factor must be > 1, got {grid_factor}")
    lrs = [r["optimal_lr"] for r in _fitted(rows)]
    if not lrs:
        return math.nan
    return math.log(max(lrs) / min(lrs)) / math.log(grid_factor)


def width_slope(rows: Sequence[dict[str, Any]]) -> float:
    """Least-squares slope of log2(optimal LR) vs log2(d_model): about -1 under standard param. (Adam), 0 under muP."""
    fitted = _fitted(rows)
    if len({r["d_model"] for r in fitted}) < 2:
        return math.nan
    x = np.log2([r["d_model"] for r in fitted])
    y = np.log2([r["optimal_lr"] for r in fitted])
    return float(np.polyfit(x, y, 1)[0])


def transfer_summary(points: Sequence[Point]) -> list[dict[str, Any]]:
    """Shift and slope per (parametrization, tokens): the numbers that say whether the optimum transfers."""
    rows, factor = transfer_table(points), grid_factor(points)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["parametrization"], row["tokens"])].append(row)
    summary = []
    for (param, tokens), group in groups.items():
        shift = shift_in_grid_steps(group, factor)
        widths = [r["d_model"] for r in group]
        summary.append({"parametrization": param, "tokens": tokens, "grid_factor": factor, "shift_grid_steps": shift,
                        "shift_factor": factor**shift, "slope": width_slope(group), "d_model_min": min(widths),
                        "d_model_max": max(widths), "n_at_edge": sum(bool(r["at_edge"]) for r in group)})
    return summary


# ---- duration ----

def _select_curves(points: Sequence[Point], d_model: int | None, parametrization: str | None) -> list[Curve]:
    """The curves of the one (parametrization, width) asked for, or the only one there is."""
    curves = [c for c in group_curves(points) if d_model in (None, c.d_model)
              and parametrization in (None, c.parametrization)]
    if not curves:
        raise KilnError(f"no runs with d_model={d_model} parametrization={parametrization}; the sweep has "
                        + _describe_choices(group_curves(points)))
    if len({(c.parametrization, c.d_model) for c in curves}) > 1:
        raise KilnError(f"the sweep has several widths/parametrizations ({_describe_choices(curves)}); choose one "
                        "with d_model and parametrization")
    return curves


def _describe_choices(curves: Sequence[Curve]) -> str:
    keys = sorted({(c.parametrization, c.d_model) for c in curves}, key=lambda k: (parametrization_order(k[0]), k[1]))
    return ", ".join(f"parametrization={p} d_model={w}" for p, w in keys)


def duration_fit(points: Sequence[Point], d_model: int | None = None, parametrization: str | None = None,
                 min_tokens: int = 0) -> DurationFit:
    """Fit log LR*(D) = log B - beta log D over the durations (of at least `min_tokens`) swept at one width and
    parametrization. The law is a straight line only far enough from the start: `min_tokens` leaves out the
    shortest runs, where warmup and the first plateau decide the optimum.

    beta's uncertainty: the OLS standard error (3+ durations), and a bootstrap. With 2+ seeds per LR the bootstrap
    redraws the seeds of every curve, refits each optimum and then beta; with one seed, when the noise of a loss is
    unknown, it redraws each log LR* from a normal of sd half a grid step (a full step at the grid edge).
    """
    curves = [c for c in _select_curves(points, d_model, parametrization)
              if c.optimum() is not None and c.tokens >= min_tokens]
    if not curves:
        raise KilnError(f"no duration of at least {min_tokens} tokens has an optimum to fit")
    step = math.log(grid_factor([p for p in points if (p.parametrization, p.d_model)
                                 == (curves[0].parametrization, curves[0].d_model)]))
    rows = [_duration_row(c, step) for c in curves]
    if len({r["D"] for r in rows}) < 2:
        raise KilnError(f"need optima at 2 or more durations to fit beta, got {[r['D'] for r in rows]} tokens")
    x, y = np.log([r["D"] for r in rows]), np.log([r["optimal_lr"] for r in rows])
    ols = stats.linregress(x, y)
    seeds = min(c.n_seeds for c in curves)
    boot = _seed_bootstrap_betas(curves, x, rows) if seeds >= 2 else \
        _bootstrap_betas(x, y, np.array([r["sigma_log_lr"] for r in rows]))
    return DurationFit(d_model=curves[0].d_model, parametrization=curves[0].parametrization, rows=rows,
                       beta=float(-ols.slope), beta_stderr=float(ols.stderr) if len(rows) >= 3 else None,
                       beta_boot_std=float(boot.std(ddof=1)),
                       beta_interval=(float(np.percentile(boot, 16)), float(np.percentile(boot, 84))),
                       B=float(math.exp(ols.intercept)),
                       bootstrap=f"{seeds} seeds redrawn" if seeds >= 2 else "half a grid step per optimum")


def _duration_row(curve: Curve, step: float) -> dict[str, Any]:
    opt = curve.optimum()
    return {"D": curve.tokens, "optimal_lr": opt.lr, "best_grid_lr": opt.best_grid_lr, "at_edge": opt.at_edge,
            "sigma_log_lr": step if opt.at_edge else step / 2}


def _bootstrap_betas(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """beta refitted on BOOTSTRAP_SAMPLES redraws of log LR* ~ Normal(fitted, sigma), with a fixed seed."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = y + rng.normal(size=(BOOTSTRAP_SAMPLES, y.size)) * sigma
    return -np.polyfit(x, draws.T, 1)[0]


def _seed_bootstrap_betas(curves: Sequence[Curve], x: np.ndarray, rows: list[dict[str, Any]]) -> np.ndarray:
    """beta refitted on seed-resampled optima (resampled_optima per duration); each row's sigma becomes the sd of
    its resampled log optimum, for the error bars."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    logs = np.log(np.stack([resampled_optima(c, rng) for c in curves]))  # (durations, samples)
    for row, samples in zip(rows, logs, strict=True):
        row["sigma_log_lr"] = float(np.nanstd(samples))
    logs = logs[:, np.isfinite(logs).all(axis=0)]
    return -np.polyfit(x, logs, 1)[0]
