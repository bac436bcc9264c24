"""The `stability` section of the experiment config (see docs/stability.md)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.config import require, require_non_negative, require_positive


@dataclass
class StabilityConfig:
    window: int = 128  # W: values of history before the spike rule applies
    k: float = 6.0  # a spike exceeds mean + k * std of the previous W values
    layer_stats_every: int = 50  # per-layer norms, update ratios and activation maxima; 0 = off
    skip_spikes: bool = False  # skip-step: do not apply an update whose loss or grad norm spikes
    forensics: bool = True  # save the spiking batch's ids, text and repeated n-grams in RUN/spikes/
    rollback: bool = False  # reload the last checkpoint after `rollback_after` spikes in a row, or a NaN
    rollback_after: int = 3  # spikes in a row that trigger a rollback
    rollback_lr_factor: float = 0.5  # scale the learning rate by this at each rollback
    max_rollbacks: int = 5  # stop with an error after this many rollbacks in the run

    def validate(self) -> None:
        require(self.window >= 2, "stability.window", self.window, "2 or more")
        require_positive(self, "stability", "rollback_after")
        require_non_negative(self, "stability", "layer_stats_every", "max_rollbacks")
        require(0 < self.rollback_lr_factor <= 1, "stability.rollback_lr_factor", self.rollback_lr_factor, "in (0, 1]")
