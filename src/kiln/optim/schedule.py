"""Learning-rate multipliers of the peak LR, as pure functions of progress (steps or tokens).

Being stateless, a schedule resumes exactly from the step and token counters alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from kiln.config import require, require_non_negative


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "linear", "wsd", "constant"] = "cosine"  # the shape after warmup
    units: Literal["steps", "tokens"] = "steps"  # what warmup counts (tokens: over all ranks)
    warmup: int = 30  # linear warmup from 0 to the peak, in `units`; 0 = none
    min_lr_ratio: float = 0.1  # floor of cosine/linear/WSD as a fraction of the peak
    decay_fraction: float = 0.2  # WSD: share of the run spent decaying

    def validate(self) -> None:
        require_non_negative(self, "schedule", "warmup")
        for name in ("min_lr_ratio", "decay_fraction"):
            require(0 <= getattr(self, name) <= 1, f"schedule.{name}", getattr(self, name), "in [0, 1]")


def lr_multiplier(cfg: ScheduleConfig, progress: int, total: int) -> float:
    """Multiplier for the step that brings training to `progress` of `total` (both in `cfg.units`).

    Progress counts the current step in (the first step has progress 1 step, or its tokens), so warmup starts
    at a small positive rate rather than wasting a step at zero.
    """
    if cfg.warmup > 0 and progress < cfg.warmup:
        return progress / cfg.warmup
    if cfg.name == "constant":
        return 1.0
    floor = cfg.min_lr_ratio
    if cfg.name == "wsd":
        decay_start = total - int(cfg.decay_fraction * total)
        if progress < decay_start:
            return 1.0
        frac = (progress - decay_start) / max(total - decay_start, 1)
        return 1.0 - (1.0 - floor) * min(frac, 1.0)
    frac = min((progress - cfg.warmup) / max(total - cfg.warmup, 1), 1.0)
    if cfg.name == "linear":
        return 1.0 - (1.0 - floor) * frac
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac))
