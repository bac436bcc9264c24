"""What each finished ladder run measured at its end: validation loss and, per downstream task, bpb and accuracy."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from kiln.errors import KilnError
from kiln.experiments.runlog import read_run
from kiln.ladder.runner import load_plan, run_dir
from kiln.ladder.spec import Rung, RunPlan, format_count


@dataclass
class TaskResult:
    bpb: float  # bits per byte of the gold continuation
    accuracy: float | None  # the task's primary accuracy metric; None for a bpb-only task
    chance: float | None  # the accuracy a uniform guess gets


@dataclass
class Point:
    """One finished run: a (N, D) point of the ladder."""

    rung: str
    run: str
    n: int  # non-embedding parameters
    tokens: int  # D, tokens trained on
    multiple: float
    heldout: bool
    val_loss: float
    val_bpb: float
    tasks: dict[str, TaskResult] = field(default_factory=dict)


def final_record(folder: Path, steps: int) -> dict | None:
    """The metrics of the run's last step, when it reached `steps` and evaluated there."""
    if not (folder / "metrics.jsonl").is_file():
        return None
    records = read_run(folder).records
    last = records[-1] if records else {}
    return last if last.get("step") == steps and "val_loss" in last else None


def task_results(record: dict) -> dict[str, TaskResult]:
    """`downstream/{task}/bpb` and the task's primary metric, for every task the run scored."""
    from kiln.eval.tasks import get_task

    names = sorted({key.split("/")[1] for key in record if key.startswith("downstream/") and key.count("/") == 2})
    out = {}
    for name in names:
        metrics = {key.split("/")[2]: value for key, value in record.items() if key.startswith(f"downstream/{name}/")}
        primary = get_task(name).primary_metric
        accuracy = metrics.get(primary) if primary != "bpb" else None
        out[name] = TaskResult(metrics["bpb"], accuracy, metrics.get("chance") if accuracy is not None else None)
    return out


def point(rung: Rung, run: RunPlan, record: dict, seq_len: int) -> Point:
    return Point(rung.name, run.name, rung.n, run.steps * rung.sequences * seq_len, run.multiple, rung.heldout,
                 record["val_loss"], record["val_bpb"], task_results(record))


def collect(out: Path) -> tuple[list[Point], list[str]]:
    """Every finished run's point, and the names of the runs not finished (yet)."""
    rungs, seq_len = load_plan(out)
    points, missing = [], []
    for rung in rungs:
        for run in rung.runs:
            record = final_record(run_dir(out, rung, run), run.steps)
            if record is None:
                missing.append(f"{rung.name}/{run.name}")
            else:
                points.append(point(rung, run, record, seq_len))
    if not points:
        raise KilnError(f"no run in {out} has finished; train them with kiln ladder run")
    return points, missing


def write_points(points: list[Point], path: Path) -> Path:
    """results.csv: a row per run with its loss and each task's bpb and accuracy."""
    tasks = sorted({name for p in points for name in p.tasks})
    columns = ["rung", "run", "n", "tokens", "multiple", "heldout", "val_loss", "val_bpb"]
    columns += [f"{t}/{m}" for t in tasks for m in ("bpb", "accuracy", "chance")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for p in points:
            row = [p.rung, p.run, p.n, p.tokens, p.multiple, p.heldout, p.val_loss, p.val_bpb]
            for t in tasks:
                result = p.tasks.get(t)
                row += [getattr(result, m, None) if result else None for m in ("bpb", "accuracy", "chance")]
            writer.writerow(["" if v is None else v for v in row])
    return path


def points_table(points: list[Point]) -> list[str]:
    """The markdown table of rungs: N, D, final loss and each task's bpb."""
    tasks = sorted({name for p in points for name in p.tasks})
    head = ["rung", "N", "D (tokens)", "D/N", "val loss"] + [f"{t} bpb" for t in tasks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(points, key=lambda p: (p.heldout, p.n, p.tokens)):
        cells = [p.rung + (" (held out)" if p.heldout else ""), f"{p.n:,}", format_count(p.tokens),
                 f"{p.tokens / p.n:.0f}", f"{p.val_loss:.4f}"]
        cells += [f"{p.tasks[t].bpb:.4f}" if t in p.tasks else "" for t in tasks]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
