"""The stability monitor: spikes, spike score, gradient-norm growth, per-layer statistics, skip-step and forensics.

Remedies for what it sees are config switches elsewhere (docs/stability.md lists them with their sources); this
callback measures, optionally refuses spiking updates (skip-step), and asks the trainer for a rollback after
`rollback_after` spikes in a row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kiln.distributed import unwrap
from kiln.stability import forensics, layer_stats
from kiln.stability.config import StabilityConfig
from kiln.stability.spikes import GrowthTracker, SpikeDetector, SpikeScore
from kiln.train.trainer import Callback


class StabilityMonitor(Callback):
    """A callback; the trainer calls `on_step_start`, `before_optimizer_step` and `on_step_end` every step."""

    def __init__(self, cfg: StabilityConfig, run_dir: Path, tokenizer=None, locate=None) -> None:
        self.cfg, self.run_dir, self.tokenizer, self.locate = cfg, run_dir, tokenizer, locate
        self.detectors = {"loss": SpikeDetector(cfg.window, cfg.k), "grad_norm": SpikeDetector(cfg.window, cfg.k)}
        self.score, self.growth = SpikeScore(cfg.window), GrowthTracker(cfg.window)
        self.in_a_row, self.streak_start, self.skipped = 0, 0, 0
        self._probe = self._before = None
        self._step: dict[str, Any] = {}

    def _stats_step(self, step: int) -> bool:
        return bool(self.cfg.layer_stats_every) and step % self.cfg.layer_stats_every == 0

    def on_step_start(self, trainer) -> None:
        self.on_fit_end(trainer)  # a step that ended in a NaN (rollback) left its probe attached
        self._probe = self._before = None
        if self._stats_step(trainer.state.step + 1):
            self._probe = layer_stats.ActivationProbe(unwrap(trainer.model)).__enter__()

    def before_optimizer_step(self, trainer, loss: float, grad_norm: float) -> bool:
        """Judge this step's loss and gradient norm; True means: skip the update."""
        flags = {"loss": self.detectors["loss"].update(loss),
                 "grad_norm": self.detectors["grad_norm"].update(grad_norm)}
        skip = self.cfg.skip_spikes and any(flags.values())
        self._step = {"loss_spike": flags["loss"], "grad_norm_spike": flags["grad_norm"], "skipped": skip}
        if self._probe is not None:
            self._probe.__exit__(None, None, None)  # the step's forward passes are done; evaluation's are not its
            self._step.update(layer_stats.grad_and_weight_norms(unwrap(trainer.model)))
            self._before = layer_stats.snapshot(unwrap(trainer.model))
        return skip

    def on_step_end(self, trainer, metrics: dict[str, Any]) -> None:
        step_flags, self._step = self._step, {}
        metrics.update(step_flags)
        spike = step_flags.get("loss_spike", False) or step_flags.get("grad_norm_spike", False)
        metrics["spike_score"], metrics["spike_score_cum"] = self.score.update(spike)
        metrics["grad_norm_growth"] = self.growth.update(metrics["step"], metrics["grad_norm"])
        self.skipped += int(step_flags.get("skipped", False))
        metrics["skipped_total"] = self.skipped
        self._finish_layer_stats(trainer, metrics)
        self.in_a_row = self.in_a_row + 1 if spike else 0
        if self.in_a_row == 1:
            self.streak_start = metrics["step"]
        if spike and self.cfg.forensics:
            records = forensics.describe_batch(trainer.last_batches, self.tokenizer, self.locate)
            forensics.save_spike(self.run_dir, metrics["step"], metrics, records)
        if self.cfg.rollback and self.in_a_row >= self.cfg.rollback_after:
            # a checkpoint saved during the streak already holds its updates: go back to one from before it
            trainer.request_rollback(f"{self.in_a_row} spikes in a row", before_step=self.streak_start)
            self.in_a_row = 0

    def _finish_layer_stats(self, trainer, metrics: dict[str, Any]) -> None:
        if self._probe is None:
            return
        metrics.update(self._probe.reduce(trainer.device))
        if self._before is not None:
            metrics.update(layer_stats.update_ratios(unwrap(trainer.model), self._before))
        self._probe = self._before = None

    def on_fit_end(self, trainer) -> None:
        if self._probe is not None:
            self._probe.__exit__(None, None, None)

    def state_dict(self) -> dict[str, Any]:
        return {"detectors": {k: d.state_dict() for k, d in self.detectors.items()}, "score": self.score.state_dict(),
                "growth": self.growth.state_dict(), "in_a_row": self.in_a_row, "streak_start": self.streak_start,
                "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, det in self.detectors.items():
            det.load_state_dict(state["detectors"][key])
        self.score.load_state_dict(state["score"])
        self.growth.load_state_dict(state["growth"])
        self.in_a_row, self.streak_start, self.skipped = state["in_a_row"], state["streak_start"], state["skipped"]

