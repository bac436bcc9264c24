"""Reading run folders for reports and sweeps: metrics.jsonl (one record per step), rollbacks and forensics files."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.train.metrics_log import METRICS_FILE, parse_metrics

ROLLBACKS_FILE = "rollbacks.jsonl"
FORENSICS_DIR = "spikes"
LAYER_KEY = re.compile(r"^layer/(\d+)/(\w+)$")
# (file stem, per-layer metric, title, log y-axis)
LAYER_PLOTS = [
    ("layer_grad_norm", "grad_norm", "per-layer gradient norm", True),
    ("layer_weight_norm", "weight_norm", "per-layer weight norm", False),
    ("layer_update_ratio", "update_ratio", "per-layer update ratio |dW| / |W|", True),
    ("layer_act_rms", "act_rms", "per-layer activation RMS", False),
    ("layer_act_max", "act_max", "per-layer activation max |x|", True),
    ("layer_attn_logit_max", "attn_logit_max", "per-layer attention logit max", False),
]
# (key, column heading) of the per-run summary table, in order
SUMMARY_COLUMNS = [
    ("run", "run"), ("steps", "steps"), ("tokens", "tokens"), ("final_loss", "final loss"),
    ("final_val_loss", "final val loss"), ("best_val_loss", "best val loss"),
    ("spike_score_cum", "spike score (cum.)"), ("loss_spikes", "loss spikes"), ("grad_spikes", "grad-norm spikes"),
    ("skipped_steps", "skipped steps"), ("max_grad_norm", "max grad norm"),
    ("grad_norm_growth", "grad-norm growth (last)"), ("rollbacks", "rollbacks"),
]
LINESTYLES = ["-", "--", ":", "-."]
FLAGS = ("loss_spike", "grad_norm_spike", "skipped")


@dataclass
class RunLog:
    """One run folder's metrics, one record per step in step order.

    A step logged twice (replayed after a rollback) keeps its last record, so the plots show the path the run took;
    `logged` keeps every line, so spike counts and the maximum grad norm still see what the rollback undid.
    """

    path: Path
    label: str
    records: list[dict[str, Any]]
    logged: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """Steps and finite numeric values of `key` where it was logged."""
        steps, values = [], []
        for record in self.records:
            value = record.get(key)
            if _is_number(value) and math.isfinite(value):
                steps.append(record["step"])
                values.append(float(value))
        return steps, values

    def flagged(self, key: str) -> list[int]:
        """Steps whose boolean flag `key` is true (in the path taken)."""
        return [r["step"] for r in self.records if r.get(key) is True]

    def count(self, key: str) -> int | None:
        """Logged lines that set flag `key`; None when the run never logged it (not the same as none set)."""
        return sum(r.get(key) is True for r in self.logged) if self.has(key) else None

    def has(self, key: str) -> bool:
        return any(key in r for r in self.logged)

    def layers(self) -> list[int]:
        found = {int(m.group(1)) for r in self.records for k in r if (m := LAYER_KEY.match(k))}
        return sorted(found)

    def rollbacks(self) -> list[str]:
        path = self.path / ROLLBACKS_FILE
        return [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def forensics(self) -> list[Path]:
        folder = self.path / FORENSICS_DIR
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_run(path: str | Path, label: str | None = None) -> RunLog:
    """Parse RUN/metrics.jsonl; a torn last line (a run killed mid-write) is ignored, any other bad line is not."""
    path = Path(path)
    file = path / METRICS_FILE
    if not path.is_dir():
        raise KilnError(f"run folder {path} does not exist")
    if not file.is_file():
        raise KilnError(f"{path} has no {METRICS_FILE}; give a run folder (a trainer.run_dir that has trained)")
    logged = [record for _, record in parse_metrics(file)[0]]
    by_step = {int(record["step"]): record for record in logged}
    return RunLog(path, label or path.name, [by_step[s] for s in sorted(by_step)], logged)


def run_labels(paths: list[Path]) -> list[str]:
    """Folder names, or parent/name where two runs share a name (runs/a/seed0 vs runs/b/seed0)."""
    names = [p.resolve().name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.resolve().parent.name}/{p.resolve().name}" for p in paths]


def _last(run: RunLog, key: str) -> float | None:
    """The last numeric value logged under `key`."""
    values = [r[key] for r in run.records if _is_number(r.get(key))]
    return float(values[-1]) if values else None


def summarize(run: RunLog) -> dict[str, Any]:
    """The numbers a comparison needs, keyed as in SUMMARY_COLUMNS; None where the run did not log the metric."""
    val = [v for v in (r.get("val_loss") for r in run.records) if _is_number(v) and not math.isnan(v)]
    grad = [v for v in (r.get("grad_norm") for r in run.logged) if _is_number(v) and not math.isnan(v)]
    return {
        "run": run.label,
        "steps": run.records[-1]["step"] if run.records else None,
        "tokens": None if (tokens := _last(run, "tokens")) is None else int(tokens),
        "final_loss": _last(run, "loss"),
        "final_val_loss": float(val[-1]) if val else None,
        "best_val_loss": float(min(val)) if val else None,
        "final_val_full_bpb": _last(run, "val_full_bpb"),
        "spike_score_cum": _last(run, "spike_score_cum"),
        "loss_spikes": run.count("loss_spike"),
        "grad_spikes": run.count("grad_norm_spike"),
        "skipped_steps": run.count("skipped"),
        "max_grad_norm": float(max(grad)) if grad else None,
        "grad_norm_growth": _last(run, "grad_norm_growth"),
        "rollbacks": len(run.rollbacks()),
    }
