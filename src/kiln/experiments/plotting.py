"""Figure helpers the experiment reports share (muP, the ladder): headless matplotlib, one colour per value."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def new_figure(ncols: int, sharey: bool = False):
    """A figure with `ncols` panels side by side, drawn without a display."""
    fig = Figure(figsize=(5.5 * ncols, 4.5), layout="constrained")
    return fig, fig.subplots(1, ncols, sharey=sharey, squeeze=False)[0]


def save_figure(fig: Figure, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return Path(path)


def value_colors(values: Sequence[float]) -> dict[float, Any]:
    """A viridis colour per distinct value, in order, so a size or length reads as a shade."""
    from matplotlib import colormaps

    keys = sorted(set(values))
    cmap = colormaps["viridis"]
    return {k: cmap(0.85 * i / max(1, len(keys) - 1)) for i, k in enumerate(keys)}
