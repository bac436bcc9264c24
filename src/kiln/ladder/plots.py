"""The ladder's plots: each quantity vs tokens per size with the fitted law, predicted vs actual, bpb -> accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import ScalarFormatter

from kiln.experiments.plotting import new_figure, save_figure, value_colors
from kiln.ladder.fit import LawFit, SigmoidFit
from kiln.ladder.spec import format_count


def plot_loss_vs_tokens(points: list[dict], fit: LawFit, path: Path, title: str, ylabel: str,
                        heldout: list[dict] | None = None) -> Path:
    """Measured points ({n, d, value}) and the law's curve over D for each N, on log-log axes."""
    heldout = heldout or []
    fig, (ax,) = new_figure(1)
    colors = value_colors([p["n"] for p in points])
    d_all = [p["d"] for p in points + heldout]
    d_grid = np.geomspace(min(d_all) / 1.5, max(d_all) * 1.5, 100)
    for n, color in colors.items():
        mine = sorted((p for p in points if p["n"] == n), key=lambda p: p["d"])
        ax.plot([p["d"] for p in mine], [p["value"] for p in mine], "o", color=color, label=f"N={format_count(n)}")
        ax.plot(d_grid, fit.predict(n, d_grid), "-", color=color, alpha=0.7)
    for n in sorted({p["n"] for p in heldout}):
        mine = sorted((p for p in heldout if p["n"] == n), key=lambda p: p["d"])
        ax.plot([p["d"] for p in mine], [p["value"] for p in mine], "*", color="crimson", markersize=13,
                label=f"N={format_count(n)} held out")
        ax.plot(d_grid, fit.predict(n, d_grid), "--", color="crimson", alpha=0.8)
    ax.set(xscale="log", yscale="log", xlabel="tokens D", ylabel=ylabel, title=title)
    ax.yaxis.set_major_formatter(ScalarFormatter())  # a loss of 3.5 reads better than 3.5 x 10^0
    ax.yaxis.set_minor_formatter(ScalarFormatter())
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_predicted_vs_actual(rows: list[dict], path: Path, title: str) -> Path:
    """Fitted/predicted against measured, the diagonal and a +-2% band; held-out rows as stars with intervals."""
    fig, (ax,) = new_figure(1)
    values = [r["actual"] for r in rows] + [r["predicted"] for r in rows]
    line = np.linspace(min(values) * 0.97, max(values) * 1.03, 2)
    ax.plot(line, line, "k-", lw=0.8, label="predicted = actual")
    ax.fill_between(line, line * 0.98, line * 1.02, color="grey", alpha=0.2, label="within 2%")
    fitted = [r for r in rows if not r.get("heldout")]
    ax.plot([r["actual"] for r in fitted], [r["predicted"] for r in fitted], "o", color="steelblue",
            label="ladder runs (fitted)")
    for r in (r for r in rows if r.get("heldout")):
        err = [[r["predicted"] - r.get("lo", r["predicted"])], [r.get("hi", r["predicted"]) - r["predicted"]]]
        ax.errorbar([r["actual"]], [r["predicted"]], yerr=err, fmt="*", color="crimson", markersize=13, capsize=4)
        ax.annotate(r.get("label", ""), (r["actual"], r["predicted"]), fontsize=8, xytext=(6, -10),
                    textcoords="offset points")
    ax.plot([], [], "*", color="crimson", markersize=13, label="held out (prediction, interval)")
    ax.set(xlabel="actual", ylabel="predicted", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_sigmoid(x: np.ndarray, acc: np.ndarray, fit: SigmoidFit, path: Path, title: str,
                 heldout: list[dict] | None = None) -> Path:
    """Accuracy against task bpb, the fitted sigmoid and the chance floor; held-out runs ({x, acc}) as stars."""
    fig, (ax,) = new_figure(1)
    ax.plot(x, acc, "o", color="steelblue", label="ladder runs")
    xs = [*x, *(h["x"] for h in heldout or [])]
    grid = np.linspace(min(xs) - 0.1, max(xs) + 0.1, 200)
    ax.plot(grid, fit.predict(grid), "-", color="steelblue", label="fitted sigmoid")
    ax.axhline(fit.floor, color="grey", linestyle="--", label=f"chance {fit.floor:.3f}")
    for h in heldout or []:
        ax.plot([h["x"]], [h["acc"]], "*", color="crimson", markersize=13)
    if heldout:
        ax.plot([], [], "*", color="crimson", markersize=13, label="held out")
    ax.set(xlabel="task bpb (correct answer)", ylabel="accuracy", title=title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
