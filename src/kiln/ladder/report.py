"""`kiln ladder fit`: the scaling law of the ladder's rungs, its predictions for held-out runs, and the report.

Two steps, as in Bhagia et al. 2024: a Chinchilla law L(N, D) = E + A / N^alpha + B / D^beta fitted to the
validation loss and to each task's bpb, then a sigmoid from task bpb to accuracy with chance as its floor. Every
interval comes from refitting on bootstrap resamples of the rungs' points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kiln.errors import KilnError
from kiln.ladder.fit import (
    LawFit,
    SigmoidFit,
    bootstrap,
    bootstrap_sigmoid,
    compute_optimal,
    fit_law,
    fit_sigmoid,
    interval,
)
from kiln.ladder.results import Point, points_table, write_points
from kiln.ladder.spec import format_count

FIT_FILE, REPORT_FILE = "fit.json", "fit.md"
LAW_KEYS = ("E", "A", "alpha", "B", "beta")


def _arrays(points: list[Point], value) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([p.n for p in points], float), np.array([p.tokens for p in points], float),
            np.array([value(p) for p in points], float))


def fit_law_with_bootstrap(points: list[Point], value, samples: int, seed: int) -> dict[str, Any]:
    n, d, y = _arrays(points, value)
    fit = fit_law(n, d, y)
    return {"fit": fit.to_dict(), "bootstrap": [b.to_dict() for b in bootstrap(n, d, y, samples=samples, seed=seed)]}


# A ladder whose best accuracy is within this of chance has not shown the sigmoid's rise: 0.05 is 2.5 standard
# errors of a 4-way task's accuracy on 500 questions.
CHANCE_MARGIN = 0.05
UNCONSTRAINED = (f"(the ladder's accuracies never rose {CHANCE_MARGIN} above chance, so this step is unconstrained "
                 "by data: treat its value and interval as unknown)")


def fit_task(points: list[Point], task: str, samples: int, seed: int) -> dict[str, Any]:
    """The task's bpb law and, for a task with an accuracy, the sigmoid from bpb to accuracy."""
    have = [p for p in points if task in p.tasks]
    out = fit_law_with_bootstrap(have, lambda p: p.tasks[task].bpb, samples, seed)
    if have[0].tasks[task].accuracy is not None:
        x = np.array([p.tasks[task].bpb for p in have])
        acc = np.array([p.tasks[task].accuracy for p in have])
        floor = float(np.mean([p.tasks[task].chance for p in have]))
        out["sigmoid"] = fit_sigmoid(x, acc, floor).to_dict()
        out["rose_above_chance"] = bool(acc.max() > floor + CHANCE_MARGIN)
        out["sigmoid_bootstrap"] = [s.to_dict() for s in bootstrap_sigmoid(x, acc, floor, samples=samples, seed=seed)]
    return out


def fit_ladder(points: list[Point], samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Fit every law to the ladder's points (held-out runs are never fitted)."""
    ladder = [p for p in points if not p.heldout]
    if len(ladder) < 5:
        raise KilnError(f"only {len(ladder)} ladder runs have finished; a law of 5 parameters needs at least 5")
    tasks = sorted({name for p in ladder for name in p.tasks})
    return {"points": len(ladder), "samples": samples, "seed": seed,
            "loss": fit_law_with_bootstrap(ladder, lambda p: p.val_loss, samples, seed),
            "tasks": {task: fit_task(ladder, task, samples, seed) for task in tasks}}


def _spread(values: np.ndarray, center: float, level: float) -> dict[str, float]:
    lo, hi = interval(values, level)
    return {"value": float(center), "lo": float(lo), "hi": float(hi)}


def predict(fitted: dict[str, Any], n: float, tokens: float, level: float = 0.9) -> dict[str, Any]:
    """Loss, each task's bpb and accuracy at (N, D), each with its bootstrap interval."""
    def law(entry: dict) -> tuple[float, np.ndarray]:
        boots = np.array([LawFit.from_dict(b).predict(n, tokens) for b in entry["bootstrap"]])
        return float(LawFit.from_dict(entry["fit"]).predict(n, tokens)), boots

    loss, loss_boots = law(fitted["loss"])
    out: dict[str, Any] = {"n": n, "tokens": tokens, "level": level, "loss": _spread(loss_boots, loss, level),
                           "tasks": {}}
    for task, entry in fitted["tasks"].items():
        bpb, bpb_boots = law(entry)
        result = {"bpb": _spread(bpb_boots, bpb, level)}
        if "sigmoid" in entry:
            acc = SigmoidFit.from_dict(entry["sigmoid"]).predict(bpb)
            sigmoids = [SigmoidFit.from_dict(s) for s in entry["sigmoid_bootstrap"]]
            chained = np.array([s.predict(b) for s, b in zip(sigmoids, bpb_boots)])  # both steps' uncertainty
            result["accuracy"] = _spread(chained, float(acc), level)
            result["chance"] = entry["sigmoid"]["floor"]
            result["unconstrained"] = not entry.get("rose_above_chance", True)
        out["tasks"][task] = result
    return out


def heldout_checks(points: list[Point], fitted: dict[str, Any], level: float) -> list[dict[str, Any]]:
    """Each held-out run's predicted and actual loss, task bpb and accuracy, with the relative error."""
    rows = []
    for p in (p for p in points if p.heldout):
        pred = predict(fitted, p.n, p.tokens, level)
        row = {"rung": p.rung, "run": p.run, "n": p.n, "tokens": p.tokens,
               "loss": _check(pred["loss"], p.val_loss), "tasks": {}}
        for task, result in p.tasks.items():
            if task not in pred["tasks"]:
                continue
            row["tasks"][task] = {"bpb": _check(pred["tasks"][task]["bpb"], result.bpb)}
            if result.accuracy is not None and "accuracy" in pred["tasks"][task]:
                row["tasks"][task]["accuracy"] = _check(pred["tasks"][task]["accuracy"], result.accuracy)
        rows.append(row)
    return rows


def _check(predicted: dict[str, float], actual: float) -> dict[str, float]:
    return {**predicted, "actual": actual, "error": (predicted["value"] - actual) / actual}


def optimal_allocations(fitted: dict[str, Any], budgets: list[float]) -> list[dict[str, float]]:
    """Compute-optimal N and D (C = 6 N D) for each FLOP budget, and the loss the law expects there."""
    law = LawFit.from_dict(fitted["loss"]["fit"])
    rows = []
    for flops in budgets:
        n, d = compute_optimal(law, flops)
        rows.append({"flops": flops, "n": n, "tokens": d, "tokens_per_param": d / n, "loss": float(law.predict(n, d))})
    return rows


def default_budgets(points: list[Point]) -> list[float]:
    """The largest run's compute (6 N D) and 10x and 100x more."""
    top = max(6.0 * p.n * p.tokens for p in points)
    return [top, 10 * top, 100 * top]


def _law_lines(entry: dict[str, Any], level: float) -> list[str]:
    """Each parameter with its bootstrap interval."""
    fit = entry["fit"]
    cells = []
    for key in LAW_KEYS:
        lo, hi = interval(np.array([b[key] for b in entry["bootstrap"]]), level)
        cells.append(f"{key} = {fit[key]:.4g} [{lo:.4g}, {hi:.4g}]")
    return [f"L(N, D) = {fit['E']:.4g} + {fit['A']:.4g} / N^{fit['alpha']:.4g} + {fit['B']:.4g} / D^{fit['beta']:.4g}",
            "", "; ".join(cells)]


def _pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def _interval_text(entry: dict[str, float]) -> str:
    return f"{entry['value']:.4f} [{entry['lo']:.4f}, {entry['hi']:.4f}]"


def heldout_lines(checks: list[dict[str, Any]]) -> list[str]:
    lines = ["| run | N | D | quantity | predicted [interval] | actual | error |", "|---|---|---|---|---|---|---|"]
    for row in checks:
        first = f"{row['rung']}/{row['run']} | {row['n']:,} | {format_count(row['tokens'])}"
        items = [("val loss", row["loss"])]
        for task, result in row["tasks"].items():
            items += [(f"{task} {key}", value) for key, value in result.items()]
        for i, (what, check) in enumerate(items):
            lead = first if i == 0 else " |  | "
            lines.append(f"| {lead} | {what} | {_interval_text(check)} | {check['actual']:.4f} | "
                         f"{_pct(check['error'])} |")
    return lines


def report_lines(points: list[Point], missing: list[str], fitted: dict[str, Any], checks: list[dict[str, Any]],
                 optimal: list[dict[str, float]], level: float) -> list[str]:
    lines = ["# Ladder fit", "", f"{fitted['points']} ladder runs fitted; intervals are {level:.0%} bootstrap "
             f"intervals over {fitted['samples']} resamples of them. Held-out runs are never fitted.", ""]
    if missing:
        lines += [f"Not finished (left out): {', '.join(missing)}", ""]
    lines += ["## Runs", ""] + points_table(points) + ["", "## Validation loss", ""]
    lines += _law_lines(fitted["loss"], level)
    for task, entry in fitted["tasks"].items():
        lines += ["", f"## {task}", "", "Task bpb (bits per byte of the correct answer):", ""]
        lines += _law_lines(entry, level)
        if "sigmoid" in entry:
            s = entry["sigmoid"]
            lines += ["", f"Accuracy = {s['floor']:.4g} + {s['a']:.4g} / (1 + exp(-({s['k']:.4g}) (bpb - "
                      f"{s['x0']:.4g})))  (floor = chance)"]
            if not entry.get("rose_above_chance", True):
                lines += ["", UNCONSTRAINED]
    if checks:
        lines += ["", "## Held-out runs: predicted vs actual", ""] + heldout_lines(checks)
    lines += ["", "## Compute-optimal allocation (C = 6 N D)", "", "| FLOPs | N | D | D/N | predicted loss |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['flops']:.3g} | {format_count(r['n'])} | {format_count(r['tokens'])} | "
              f"{r['tokens_per_param']:.1f} | {r['loss']:.4f} |" for r in optimal]
    return lines


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise KilnError(f"--level must be in (0, 1), got {level}")


def write_fit(ladder_dir: str | Path, out: str | Path | None = None, samples: int = 200, seed: int = 0,
              level: float = 0.9, budgets: list[float] | None = None) -> Path:
    """Collect, fit, check the held-out runs, plot; returns the path of fit.md."""
    from kiln.ladder.results import collect

    _check_level(level)
    if samples < 10:
        raise KilnError(f"--samples must be at least 10 for an interval, got {samples}")
    ladder_dir = Path(ladder_dir)
    out = Path(out) if out is not None else ladder_dir
    out.mkdir(parents=True, exist_ok=True)
    points, missing = collect(ladder_dir)
    fitted = fit_ladder(points, samples, seed)
    checks = heldout_checks(points, fitted, level)
    optimal = optimal_allocations(fitted, budgets or default_budgets(points))
    write_points(points, out / "results.csv")
    (out / FIT_FILE).write_text(json.dumps({**fitted, "heldout": checks, "optimal": optimal}, indent=1))
    plots = write_plots(points, fitted, checks, out)
    lines = report_lines(points, missing, fitted, checks, optimal, level)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    (out / REPORT_FILE).write_text("\n".join(lines) + "\n")
    return out / REPORT_FILE


def load_fit(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / FIT_FILE
    if not path.is_file():
        raise KilnError(f"{folder} holds no {FIT_FILE}; run kiln ladder fit {folder} first")
    return json.loads(path.read_text())


def prediction_lines(pred: dict[str, Any]) -> list[str]:
    """`kiln ladder predict`'s output: one line per quantity."""
    level = f"{pred['level']:.0%} interval"
    lines = [f"N = {format_count(pred['n'])} non-embedding parameters, D = {format_count(pred['tokens'])} tokens "
             f"({pred['tokens'] / pred['n']:.1f} tokens per parameter, {6 * pred['n'] * pred['tokens']:.3g} FLOPs)",
             f"validation loss  {_interval_text(pred['loss'])}  ({level})"]
    for task, result in pred["tasks"].items():
        lines.append(f"{task} bpb  {_interval_text(result['bpb'])}")
        if "accuracy" in result:
            lines.append(f"{task} accuracy  {_interval_text(result['accuracy'])}  (chance {result['chance']:.4f})")
            if result.get("unconstrained"):
                lines.append(f"  {UNCONSTRAINED}")
    return lines


def write_plots(points: list[Point], fitted: dict[str, Any], checks: list[dict[str, Any]], out: Path) -> list[Path]:
    """Loss (and each task's bpb) vs D per N with the fitted curves, predicted vs actual, and each sigmoid."""
    from kiln.ladder import plots

    ladder, held = [p for p in points if not p.heldout], [p for p in points if p.heldout]
    quantities = [("loss", "validation loss", lambda p: p.val_loss, fitted["loss"])]
    quantities += [(task, f"{task} bpb", lambda p, t=task: p.tasks[t].bpb, entry)
                   for task, entry in fitted["tasks"].items()]
    written = []
    for name, title, value, entry in quantities:
        mine, held_mine = _value_rows(ladder, name, value), _value_rows(held, name, value)
        written.append(plots.plot_loss_vs_tokens(mine, LawFit.from_dict(entry["fit"]), out / f"{name}_vs_tokens.png",
                                                  f"{title} vs tokens, fitted law per N", title,
                                                  heldout=held_mine or None))
    written.append(plots.plot_predicted_vs_actual(_predicted_rows(points, fitted, checks),
                                                  out / "predicted_vs_actual.png",
                                                  "validation loss: fitted law vs measured"))
    for task, entry in fitted["tasks"].items():
        if "sigmoid" not in entry:
            continue
        have = [p for p in ladder if task in p.tasks]
        held_xy = [{"x": p.tasks[task].bpb, "acc": p.tasks[task].accuracy} for p in held if task in p.tasks]
        written.append(plots.plot_sigmoid(np.array([p.tasks[task].bpb for p in have]),
                                          np.array([p.tasks[task].accuracy for p in have]),
                                          SigmoidFit.from_dict(entry["sigmoid"]), out / f"{task}_accuracy.png",
                                          f"{task}: accuracy vs bpb", heldout=held_xy or None))
    return written


def _value_rows(points: list[Point], name: str, value) -> list[dict[str, float]]:
    return [{"n": p.n, "d": p.tokens, "value": value(p)} for p in points if name == "loss" or name in p.tasks]


def _predicted_rows(points: list[Point], fitted: dict[str, Any], checks: list[dict[str, Any]]) -> list[dict]:
    """Every ladder point at its fitted value, and each held-out run with its interval."""
    law = LawFit.from_dict(fitted["loss"]["fit"])
    rows = [{"predicted": float(law.predict(p.n, p.tokens)), "actual": p.val_loss, "label": f"{p.rung}/{p.run}",
             "heldout": False} for p in points if not p.heldout]
    rows += [{"predicted": c["loss"]["value"], "actual": c["loss"]["actual"], "lo": c["loss"]["lo"],
              "hi": c["loss"]["hi"], "label": f"{c['rung']}/{c['run']}", "heldout": True} for c in checks]
    return rows
