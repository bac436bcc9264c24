"""What a sweep or a ladder runs: a variation (grid values and a seed), the job that trains it, and how it ended.
Their own file, so the runner (kiln.experiments.sweep) and its progress display (sweep_progress) both import them
and neither imports the other's types back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SEED_KEY = "trainer.seed"
LINK = ":"  # `--grid model.d_model:model.d_ff=64:256,128:512` moves two keys together


@dataclass(frozen=True)
class Variation:
    """One point of the grid with one seed; `values` are the grid values exactly as typed."""

    name: str
    values: dict[str, str]
    seed: int

    def overrides(self) -> list[str]:
        pairs = [pair for key, value in self.values.items() for pair in zip(key.split(LINK), value.split(LINK))]
        return [f"--{key}={value}" for key, value in pairs] + [f"--{SEED_KEY}={self.seed}"]


@dataclass(frozen=True)
class Job:
    """A variation to train: its `kiln train` command, its run folder and its step count (to show progress)."""

    variation: Variation
    command: list[str]
    run_dir: Path
    steps: int


@dataclass
class Outcome:
    """How a job ended: its status, exit code and seconds (None for one an earlier sweep finished)."""

    variation: Variation
    run_dir: Path
    status: str  # ok, done (finished by an earlier sweep, not rerun), failed
    exit_code: int | None = None
    seconds: float | None = None
