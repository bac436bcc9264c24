"""Reports of `kiln mup transfer` and `kiln mup duration`: Markdown tables, JSON and plots of a sweep's optima."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from kiln.experiments.plotting import new_figure, save_figure, value_colors
from kiln.mup.transfer import (
    PARAM_TITLES,
    REPORT_DIR,
    TRANSFER_COLUMNS,
    Curve,
    DurationFit,
    Point,
    collect_points,
    duration_fit,
    group_curves,
    parametrization_order,
    transfer_summary,
    transfer_table,
)

# ---- plots ----

def _loss_ylim(curves: Sequence[Curve]) -> tuple[float, float]:
    """Limits that show every curve's basin: a diverged LR's huge loss would otherwise flatten all of them.

    Top = the highest curve minimum + 1.5 x the median (max - min) spread of the curves, so each curve's minimum
    and a typical curve's whole range stay in view while outliers run off the top.
    """
    finite = [c.losses[~np.isnan(c.losses)] for c in curves]
    finite = [f for f in finite if f.size]
    if not finite:
        return 0.0, 1.0
    lows = [float(f.min()) for f in finite]
    spread = float(np.median([f.max() - f.min() for f in finite])) or 0.1 * abs(max(lows)) or 1.0
    return min(lows) - 0.05 * spread, max(lows) + 1.5 * spread


def _plot_curve(ax, curve: Curve, color: Any, label: str, top: float) -> None:
    """Line and markers of the finite points, a star at the fitted optimum, an 'x' at the top edge per diverged LR."""
    ok = ~np.isnan(curve.losses)
    ax.plot(curve.lrs[ok], curve.losses[ok], "o-", color=color, label=label, markersize=4)
    if (~ok).any():
        ax.plot(curve.lrs[~ok], np.full((~ok).sum(), top), "x", color=color, markersize=8, clip_on=False)
    if (opt := curve.optimum()) is not None:
        ax.plot([opt.lr], [opt.loss], "*", color=color, markersize=14, markeredgecolor="black", zorder=3)


def _style_lr_axes(ax, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)


def plot_transfer(points: Sequence[Point], path: str | Path) -> Path:
    """Loss vs LR, one panel per parametrization and one curve per width: aligned minima mean the LR transfers."""
    curves = group_curves(points)
    params = sorted({c.parametrization for c in curves}, key=parametrization_order)
    several_d = len({c.tokens for c in curves}) > 1
    colors = value_colors([c.d_model for c in curves])
    bottom, top = _loss_ylim(curves)
    fig, axes = new_figure(len(params), sharey=True)
    for ax, param in zip(axes, params):
        for curve in (c for c in curves if c.parametrization == param):
            label = f"d_model={curve.d_model}" + (f", D={curve.tokens:.3g}" if several_d else "")
            _plot_curve(ax, curve, colors[curve.d_model], label, top)
        _style_lr_axes(ax, PARAM_TITLES.get(param, param))
        ax.legend(fontsize=8)
    axes[0].set_ylim(bottom, top)
    axes[0].set_ylabel("final validation loss")
    save_figure(fig, Path(path))
    return Path(path)


def plot_duration(fit: DurationFit, points: Sequence[Point], path: str | Path) -> Path:
    """Left: loss vs LR per duration; right: optimal LR vs D (log-log) with the fitted power law and sigma bars."""
    curves = [c for c in group_curves(points) if (c.parametrization, c.d_model) == (fit.parametrization, fit.d_model)]
    colors = value_colors([c.tokens for c in curves])
    bottom, top = _loss_ylim(curves)
    fig, (left, right) = new_figure(2)
    for curve in curves:
        _plot_curve(left, curve, colors[curve.tokens], f"D={curve.tokens:.3g}", top)
    _style_lr_axes(left, f"{PARAM_TITLES.get(fit.parametrization, fit.parametrization)}, d_model={fit.d_model}")
    left.set_ylim(bottom, top)
    left.set_ylabel("final validation loss")
    left.legend(fontsize=8)
    _plot_power_law(right, fit)
    save_figure(fig, Path(path))
    return Path(path)


def _plot_power_law(ax, fit: DurationFit) -> None:
    d = np.array([r["D"] for r in fit.rows], dtype=float)
    lr = np.array([r["optimal_lr"] for r in fit.rows])
    sigma = np.array([r["sigma_log_lr"] for r in fit.rows])
    ax.errorbar(d, lr, yerr=[lr * (1 - np.exp(-sigma)), lr * (np.exp(sigma) - 1)], fmt="o", capsize=3,
                label="fitted optimum (bars: ±sigma)")
    grid = np.geomspace(d.min(), d.max(), 50)
    ax.plot(grid, fit.B * grid ** (-fit.beta), "-", label=f"B * D^-{fit.beta:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens trained D")
    ax.set_ylabel("optimal learning rate")
    ax.set_title("optimal LR vs duration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


# ---- reports ----

def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "diverged" if spec != "s" else "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def _markdown_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _json_safe(value: Any) -> Any:
    """NaN becomes null and numpy scalars plain numbers, so the JSON is strict."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _write(out_dir: Path, stem: str, text: str, data: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(_json_safe(data), indent=2) + "\n")
    md = out_dir / f"{stem}.md"
    md.write_text(text)
    return md


def _summary_line(s: dict[str, Any], several_d: bool) -> str:
    name = PARAM_TITLES.get(s["parametrization"], s["parametrization"]) + (f" (D={s['tokens']})" if several_d else "")
    edge = f"; {s['n_at_edge']} optima at the grid edge (bounds, not fits)" if s["n_at_edge"] else ""
    return (f"{name}: optimal LR moves by {s['shift_grid_steps']:.2f} grid steps (factor {s['shift_factor']:.3g}) "
            f"across d_model {s['d_model_min']}..{s['d_model_max']}; slope of log2 LR* vs log2 width: "
            f"{round(s['slope'], 2) + 0.0:.2f}{edge}")  # + 0.0: print -0.00 as 0.00


def transfer_markdown(rows: Sequence[dict[str, Any]], summary: Sequence[dict[str, Any]]) -> str:
    """The transfer table and one line per parametrization saying how far the optimum moved."""
    specs = {"d_model": "d", "tokens": "d", "best_grid_lr": ".3g", "optimal_lr": ".3g", "optimal_lr_16": ".3g",
             "optimal_lr_84": ".3g", "loss_at_optimum": ".4f", "n_seeds": "d", "n_lrs": "d", "n_diverged": "d"}
    body = [["-" if r[k] is None and k.startswith("optimal_lr_") else _fmt(r[k], specs.get(k, "s"))
             for k in TRANSFER_COLUMNS] for r in rows]
    several_d = len({s["tokens"] for s in summary}) > 1
    lines = [_summary_line(s, several_d) for s in summary]
    theory = ("Theory: slope about -1 under standard parametrization (Adam, hidden layers), about 0 under muP; "
              f"grid step = factor {summary[0]['grid_factor']:.3g}." if summary else "")
    return "# Learning-rate transfer across width\n\n" + _markdown_table(TRANSFER_COLUMNS, body) + "\n\n" \
        + "\n".join(f"- {line}" for line in lines) + f"\n\n{theory}\n"


def _unfinished_note(unfinished: list[Path]) -> str:
    if not unfinished:
        return ""
    return (f"\n{len(unfinished)} unfinished run(s) left out (still running, or stopped without a non-finite loss), "
            f"e.g. {unfinished[0].name}\n")


def write_transfer_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, str]:
    """OUT/transfer.md, .json and .png (OUT defaults to SWEEP_DIR/mup); returns the md path and its text."""
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / REPORT_DIR
    unfinished: list[Path] = []
    points = collect_points(sweep_dir, unfinished)
    rows, summary = transfer_table(points), transfer_summary(points)
    text = transfer_markdown(rows, summary) + _unfinished_note(unfinished)
    md = _write(out, "transfer", text, {"rows": rows, "summary": summary})
    plot_transfer(points, out / "transfer.png")
    return md, text


def duration_markdown(fit: DurationFit) -> str:
    """The per-duration optima and the fitted power law with beta's uncertainty."""
    body = [[str(r["D"]), _fmt(r["best_grid_lr"], ".3g"), _fmt(r["optimal_lr"], ".3g"), _fmt(r["at_edge"], "s")]
            for r in fit.rows]
    stderr = " (2 durations: no OLS stderr)" if fit.beta_stderr is None else f" ± {fit.beta_stderr:.2f} (OLS stderr)"
    lo, hi = fit.beta_interval
    name = PARAM_TITLES.get(fit.parametrization, fit.parametrization)
    return (f"# Optimal learning rate vs duration ({name}, d_model={fit.d_model})\n\n"
            + _markdown_table(["D (tokens)", "best grid LR", "optimal LR", "at edge"], body)
            + f"\n\nbeta = {fit.beta:.2f}{stderr}, bootstrap 16-84%: [{lo:.2f}, {hi:.2f}] "
            f"(std {fit.beta_boot_std:.2f}; {fit.bootstrap}); LR*(D) = B * D^-beta with B = {fit.B:.3g}\n")


def write_duration_report(sweep_dir: str | Path, out_dir: str | Path | None = None, d_model: int | None = None,
                          parametrization: str | None = None, min_tokens: int = 0) -> tuple[Path, str]:
    """OUT/duration.md, .json and .png (OUT defaults to SWEEP_DIR/mup); returns the md path and its text."""
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / REPORT_DIR
    unfinished: list[Path] = []
    points = collect_points(sweep_dir, unfinished)
    fit = duration_fit(points, d_model=d_model, parametrization=parametrization, min_tokens=min_tokens)
    left_out = sorted({p.tokens for p in points if p.tokens < min_tokens
                       and (p.parametrization, p.d_model) == (fit.parametrization, fit.d_model)})
    note = f"\nDurations left out of the fit (under {min_tokens} tokens): {left_out}\n" if left_out else ""
    text = duration_markdown(fit) + note + _unfinished_note(unfinished)
    md = _write(out, "duration", text, asdict(fit))
    plot_duration(fit, points, out / "duration.png")
    return md, text
