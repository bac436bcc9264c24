"""`kiln report`: PNG plots and one self-contained HTML page from run folders, to see and compare instability.

It reads only what a run wrote (metrics.jsonl, rollbacks.jsonl, spikes/), so a run logged before the stability
monitor existed still gets every plot its metrics allow; a missing key is shown as missing, never as zero.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from matplotlib.figure import Figure

from kiln.errors import KilnError
from kiln.experiments.report_html import render_html
from kiln.experiments.runlog import LAYER_PLOTS, LINESTYLES, METRICS_FILE, RunLog, read_run, run_labels


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values, so the smoothed curve never looks ahead of the raw one."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _new_axes(title: str, ylabel: str, logy: bool = False):
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    return fig, ax


def _mark(ax, run: RunLog, key: str, flag: str, marker: str, color: str, label: str) -> None:
    """Put a marker on the curve of `key` at every step where `flag` is set."""
    flagged = set(run.flagged(flag))
    points = [(s, v) for s, v in zip(*run.series(key)) if s in flagged]
    if points:
        colors = {"facecolors": "none", "edgecolors": color} if marker == "o" else {"color": color}
        ax.scatter(*zip(*points), marker=marker, s=60, linewidths=1.5, zorder=3, label=label, **colors)


def _plot_curve(ax, run: RunLog, key: str, color: str, smooth: int) -> None:
    """The raw curve, faint under its moving average when smoothing is on."""
    steps, values = run.series(key)
    if smooth > 1:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        values = _moving_average(values, smooth)
    ax.plot(steps, values, color=color, linewidth=1.4, label=run.label)


def _spans_a_decade(runs: list[RunLog], keys: tuple[str, ...]) -> bool:
    """Whether the values of `keys` across runs span more than 10x: a run that starts near ln(vocab) and ends far
    below it (a small VLM: 6.3 down to 0.09) leaves its later differences flat on a linear axis."""
    values = [v for run in runs for key in keys for v in run.series(key)[1] if v > 0]
    return bool(values) and max(values) > 10 * min(values)


def plot_loss(runs: list[RunLog], smooth: int = 1) -> Figure | None:
    """Train loss per run, validation points, and a ring on each loss-spike step."""
    if not any(run.series("loss")[0] for run in runs):
        return None
    fig, ax = _new_axes("loss" + (f" ({smooth}-step moving average)" if smooth > 1 else ""), "loss",
                        logy=_spans_a_decade(runs, ("loss", "val_loss")))
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        _plot_curve(ax, run, "loss", color, smooth)
        val_steps, val = run.series("val_loss")
        if val_steps:
            ax.plot(val_steps, val, "s--", color=color, markersize=5, linewidth=0.8, label=f"{run.label} (val)")
        _mark(ax, run, "loss", "loss_spike", "o", color, f"{run.label} loss spikes")
    ax.legend(fontsize="small")
    return fig


def plot_grad_norm(runs: list[RunLog], smooth: int = 1) -> Figure | None:
    """Gradient norm on a log axis, rings on grad-norm spikes and crosses on steps whose update was skipped."""
    if not any(run.series("grad_norm")[0] for run in runs):
        return None
    fig, ax = _new_axes("gradient norm (before clipping)", "grad norm", logy=True)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        _plot_curve(ax, run, "grad_norm", color, smooth)
        _mark(ax, run, "grad_norm", "grad_norm_spike", "o", color, f"{run.label} grad-norm spikes")
        _mark(ax, run, "grad_norm", "skipped", "x", color, f"{run.label} skipped steps")
    ax.legend(fontsize="small")
    return fig


def plot_series(runs: list[RunLog], key: str, title: str, logy: bool = False) -> Figure | None:
    """One line per run for a scalar metric such as `lr`; None when no run logged it."""
    if not any(run.series(key)[0] for run in runs):
        return None
    fig, ax = _new_axes(title, key, logy)
    for i, run in enumerate(runs):
        ax.plot(*run.series(key), color=f"C{i % 10}", linewidth=1.4, label=run.label)
    ax.legend(fontsize="small")
    return fig


def plot_spike_score(runs: list[RunLog]) -> Figure | None:
    """Rolling (solid) and cumulative (dashed) fraction of spike steps."""
    if not any(run.series("spike_score")[0] or run.series("spike_score_cum")[0] for run in runs):
        return None
    fig, ax = _new_axes("spike score: rolling (solid) and cumulative (dashed)", "fraction of spike steps")
    for i, run in enumerate(runs):
        ax.plot(*run.series("spike_score"), color=f"C{i % 10}", linewidth=1.4, label=run.label)
        ax.plot(*run.series("spike_score_cum"), "--", color=f"C{i % 10}", linewidth=1.0)
    ax.legend(fontsize="small")
    return fig


def plot_layers(runs: list[RunLog], metric: str, title: str, logy: bool = False) -> Figure | None:
    """`layer/{i}/{metric}` over time: colour = depth (colour bar), line style = run (legend)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    depth = max((max(run.layers(), default=-1) for run in runs), default=-1) + 1
    if not any(run.series(f"layer/{i}/{metric}")[0] for run in runs for i in run.layers()):
        return None
    fig, ax = _new_axes(title, metric, logy)
    cmap, norm = colormaps["viridis"], Normalize(0, max(depth - 1, 1))
    for r, run in enumerate(runs):
        for layer in run.layers():
            ax.plot(*run.series(f"layer/{layer}/{metric}"), color=cmap(norm(layer)),
                    linestyle=LINESTYLES[r % len(LINESTYLES)], linewidth=1.2)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer", ticks=MaxNLocator(integer=True))
    handles = [Line2D([], [], color="black", linestyle=LINESTYLES[r % len(LINESTYLES)]) for r in range(len(runs))]
    ax.legend(handles, [run.label for run in runs], fontsize="small")
    return fig


def downstream_tasks(runs: list[RunLog]) -> list[str]:
    """Tasks with in-loop metrics (`downstream/{task}/{metric}`) in any run, in first-logged order."""
    tasks: dict[str, None] = {}
    for run in runs:
        for record in run.records:
            for key in record:
                if key.startswith("downstream/") and key.count("/") == 2:
                    tasks.setdefault(key.split("/")[1], None)
    return list(tasks)


def plot_downstream(runs: list[RunLog], task: str) -> Figure | None:
    """A task's primary metric against steps, one line per run, with its chance level dashed."""
    from kiln.eval.tasks import get_task

    try:
        metric = get_task(task).primary_metric
    except KilnError:  # a task this kiln does not know: fall back to plain accuracy
        metric = "acc_raw"
    key = f"downstream/{task}/{metric}"
    if not any(run.series(key)[0] for run in runs):
        return None
    fig, ax = _new_axes(f"{task}: {metric} (dashed: chance)", metric)
    for i, run in enumerate(runs):
        ax.plot(*run.series(key), color=f"C{i % 10}", linewidth=1.4, marker=".", label=run.label)
        _, chance = run.series(f"downstream/{task}/chance")
        if chance:
            ax.axhline(chance[-1], color=f"C{i % 10}", linestyle="--", linewidth=1.0, alpha=0.7)
    ax.legend(fontsize="small")
    return fig


def build_figures(runs: list[RunLog], smooth: int = 1) -> dict[str, Figure]:
    """Every plot the runs' metrics allow, by file stem, in the order the page shows them."""
    figures = {
        "loss": plot_loss(runs, smooth),
        "grad_norm": plot_grad_norm(runs, smooth),
        "lr": plot_series(runs, "lr", "learning rate"),
        "spike_score": plot_spike_score(runs),
        "grad_norm_growth": plot_series(runs, "grad_norm_growth", "grad-norm growth (slope of log norm vs log step)"),
    }
    for stem, metric, title, logy in LAYER_PLOTS:
        figures[stem] = plot_layers(runs, metric, title, logy)
    figures["output_logit_max"] = plot_series(runs, "output_logit_max", "output logit max", logy=False)
    for task in downstream_tasks(runs):
        figures[f"downstream_{task}"] = plot_downstream(runs, task)
    return {stem: fig for stem, fig in figures.items() if fig is not None}


def expand_run_dirs(paths: list[Path]) -> list[Path]:
    """A folder of run folders (a `kiln sweep` folder) stands for the runs in it; a run folder stands for itself."""
    expanded = []
    for path in paths:
        children = sorted(p for p in path.iterdir() if (p / METRICS_FILE).is_file()) if path.is_dir() else []
        expanded += children if children and not (path / METRICS_FILE).exists() else [path]
    return expanded


def default_out_dir(given: list[Path]) -> Path:
    """RUN/report (or SWEEP/report) for one folder; reports/<timestamp> (under the working directory) for several."""
    if len(given) == 1:
        return given[0] / "report"
    return Path("reports") / datetime.now().strftime("%Y%m%d-%H%M%S")


def write_report(run_dirs: list[str | Path], out_dir: str | Path | None = None, smooth: int = 1) -> Path:
    """Write the PNGs and report.html (the PNGs embedded, so the one file can be mailed); return the HTML path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if smooth < 1:
        raise KilnError(f"--smooth must be a window of 1 step or more, got {smooth}")
    given = [Path(p) for p in run_dirs]
    paths = expand_run_dirs(given)
    runs = [read_run(p, label) for p, label in zip(paths, run_labels(paths))]
    for run in runs:
        if not run.records:
            raise KilnError(f"{run.path / METRICS_FILE} holds no steps yet")
    out = Path(out_dir) if out_dir is not None else default_out_dir(given)
    out.mkdir(parents=True, exist_ok=True)
    images = {}
    for stem, fig in build_figures(runs, smooth).items():
        FigureCanvasAgg(fig)
        images[stem] = out / f"{stem}.png"
        fig.savefig(images[stem], dpi=110)
    page = out / "report.html"
    page.write_text(render_html(runs, images, page.parent))
    return page
