"""The spike rule, the spike score and gradient-norm growth, as small stateful objects.

A value is a spike when it exceeds mean + k * std of the previous `window` values, judged only once `window`
values exist (defaults W=128, k=6). The spike score is the fraction of spike steps: over the last `window`
steps (rolling) and since the start (cumulative). Gradient-norm growth is the least-squares slope of
log(grad norm) against log(step) over the recent window: about 0 for a healthy run, positive when the norm
keeps growing as in OLMo's early runs.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np


class SpikeDetector:
    """Flags values above mean + k std of the previous `window` values."""

    def __init__(self, window: int = 128, k: float = 6.0) -> None:
        if window < 2:
            raise ValueError(f"spike window must be at least 2, got {window}")
        self.window, self.k = window, k
        self.history: deque[float] = deque(maxlen=window)

    def is_spike(self, value: float) -> bool:
        """Would `value` be a spike given the history so far? (Does not record it.)"""
        if not math.isfinite(value):
            return True
        if len(self.history) < self.window:
            return False
        values = np.fromiter(self.history, dtype=np.float64)
        return bool(value > values.mean() + self.k * values.std())

    def update(self, value: float) -> bool:
        """Judge `value`, then add it to the history (non-finite values are judged but never recorded)."""
        spike = self.is_spike(value)
        if math.isfinite(value):
            self.history.append(float(value))
        return spike

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "k": self.k, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window, self.k = state["window"], state["k"]
        self.history = deque(state["history"], maxlen=self.window)


class SpikeScore:
    """Fraction of spike steps, rolling over the last `window` steps and cumulative."""

    def __init__(self, window: int = 128) -> None:
        self.recent: deque[bool] = deque(maxlen=window)
        self.steps = self.spikes = 0

    def update(self, spike: bool) -> tuple[float, float]:
        self.recent.append(bool(spike))
        self.steps += 1
        self.spikes += int(spike)
        return sum(self.recent) / len(self.recent), self.spikes / self.steps

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.recent.maxlen, "recent": list(self.recent), "steps": self.steps, "spikes": self.spikes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.recent = deque(state["recent"], maxlen=state["window"])
        self.steps, self.spikes = state["steps"], state["spikes"]


class GrowthTracker:
    """Slope of log(value) against log(step) over the last `window` (step, value) pairs."""

    def __init__(self, window: int = 128, min_points: int = 8) -> None:
        self.points: deque[tuple[int, float]] = deque(maxlen=window)
        self.min_points = min_points

    def update(self, step: int, value: float) -> float | None:
        if value > 0 and math.isfinite(value) and step > 0:
            self.points.append((step, float(value)))
        if len(self.points) < self.min_points:
            return None
        steps, values = np.array(self.points, dtype=np.float64).T
        x, y = np.log(steps), np.log(values)
        if np.ptp(x) == 0:
            return None
        return float(np.polyfit(x, y, 1)[0])

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.points.maxlen, "points": [list(p) for p in self.points]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.points = deque((tuple(p) for p in state["points"]), maxlen=state["window"])
