"""`kiln sweep`: train every combination of a few config values (times seeds), then tabulate how stable each was.

Each variation is a plain `kiln train` subprocess in its own run folder, so one crash cannot take the others down,
a rerun skips the variations that finished, and an interrupted one resumes from its checkpoints like any run.
"""

from __future__ import annotations

import csv
import itertools
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.config import parse_overrides
from kiln.errors import KilnError
from kiln.stability.runlog import METRICS_FILE, read_run, summarize
from kiln.train.config import load_config

LOG_FILE = "train.log"
SEED_KEY, RUN_DIR_KEY = "trainer.seed", "trainer.run_dir"
# (summary key from kiln.stability.runlog.summarize, column heading) after name, grid keys, seed and status
RESULT_COLUMNS = [
    ("final_val_loss", "final_val_loss"), ("spike_score_cum", "spike_score_cum"),
    ("max_grad_norm", "max_grad_norm"), ("skipped_steps", "skipped_steps"), ("final_loss", "final_train_loss"),
]


@dataclass(frozen=True)
class Variation:
    """One point of the grid with one seed; `values` are the grid values exactly as typed."""

    name: str
    values: dict[str, str]
    seed: int

    def overrides(self) -> list[str]:
        return [f"--{key}={value}" for key, value in self.values.items()] + [f"--{SEED_KEY}={self.seed}"]


@dataclass
class Outcome:
    variation: Variation
    status: str  # ok, done (finished by an earlier sweep, not rerun), failed
    exit_code: int | None = None
    seconds: float | None = None


def split_values(text: str) -> list[str]:
    """Split on commas outside brackets, so a list value survives: `data.weights=[0.5,0.5],[0.9,0.1]`."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """`["optim.lr=1e-3,3e-3", ...]` -> {"optim.lr": ["1e-3", "3e-3"], ...}, in the order given."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().removeprefix("--")
        values = split_values(text)
        if not sep or not key or "" in values:
            raise KilnError(f"--grid {spec!r} must look like section.key=value1,value2")
        if key in grid:
            raise KilnError(f"--grid names {key} twice; give all its values in one --grid {key}=v1,v2")
        if key in (SEED_KEY, RUN_DIR_KEY):
            raise KilnError(f"--grid cannot set {key}: the sweep sets it (use --seeds N for several seeds, counting up "
                            f"from the recipe's {SEED_KEY})")
        if len(set(values)) != len(values):
            raise KilnError(f"--grid {key} repeats a value: {text}")
        grid[key] = values
    return grid


def run_name(values: dict[str, str], seed: int) -> str:
    """A folder name that reads as the variation: `optim.lr=1e-3__model.qk_norm=none__seed=0`."""
    parts = [f"{key}={value}" for key, value in values.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", "__".join(parts))


def plan_sweep(grid: dict[str, list[str]], seeds: int, first_seed: int = 0) -> list[Variation]:
    """The cartesian product of the grid values, each with seeds first_seed .. first_seed + seeds - 1."""
    if seeds < 1:
        raise KilnError(f"--seeds must be 1 or more, got {seeds}")
    keys = list(grid)
    variations = [Variation(run_name(dict(zip(keys, combo)), seed), dict(zip(keys, combo)), seed)
                  for combo in itertools.product(*(grid[k] for k in keys))
                  for seed in range(first_seed, first_seed + seeds)]
    names = [v.name for v in variations]
    if len(set(names)) != len(names):
        raise KilnError("two variations map to the same folder name; use grid values that differ in letters or digits")
    return variations


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def check_extra(extra: list[str], grid: dict[str, list[str]]) -> None:
    """Extra overrides apply to every variation; they may not fight the grid or move the run folders."""
    clash = sorted(_dotted_keys(parse_overrides(extra)) & ({RUN_DIR_KEY} | set(grid)))
    if clash:
        raise KilnError(f"the overrides given beside --grid also set {', '.join(clash)}, which the sweep sets for "
                        "each variation; remove them")


def validate(base: str | Path, variations: list[Variation], extra: list[str]) -> dict[str, int]:
    """Load every variation's config before anything runs, so a typo fails at once; returns each one's steps."""
    steps = {}
    for variation in variations:
        try:
            cfg = load_config(base, extra + variation.overrides())
        except KilnError as err:
            raise KilnError(f"variation {variation.name}: {err}") from err
        steps[variation.name] = cfg.trainer.steps
    return steps


def train_command(base: str | Path, variation: Variation, extra: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "kiln", "train", str(base), *extra, *variation.overrides(),
            f"--{RUN_DIR_KEY}={run_dir}"]


def is_finished(run_dir: Path, steps: int) -> bool:
    """The run logged its last step (a folder from a crashed or interrupted run is not finished)."""
    if not (run_dir / METRICS_FILE).is_file():
        return False
    try:
        records = read_run(run_dir).records
    except KilnError:
        return False
    return bool(records) and records[-1]["step"] >= steps


def _train(command: list[str], run_dir: Path) -> tuple[int, float]:
    """Run one training subprocess, appending its output to RUN/train.log (a rerun keeps the earlier attempt's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with (run_dir / LOG_FILE).open("a") as log:
        log.write(f"=== kiln sweep {datetime.now().isoformat(timespec='seconds')}: {shlex.join(command)}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    return code, time.monotonic() - start


def _last_log_line(run_dir: Path) -> str:
    lines = [line for line in (run_dir / LOG_FILE).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def run_variations(jobs: list[tuple[Variation, list[str], Path]], parallel: int = 1) -> list[Outcome]:
    """Run the (variation, command, run folder) jobs, `parallel` at a time; a failure does not stop the rest."""
    counter = itertools.count(1)

    def one(job: tuple[Variation, list[str], Path]) -> Outcome:
        variation, command, run_dir = job
        code, seconds = _train(command, run_dir)
        finished = next(counter)
        outcome = Outcome(variation, "ok" if code == 0 else "failed", code, seconds)
        if code == 0:
            print(f"[{finished}/{len(jobs)}] {variation.name}: ok in {seconds:.0f} s", flush=True)
        else:
            print(f"[{finished}/{len(jobs)}] {variation.name}: failed with exit code {code} "
                  f"({_last_log_line(run_dir)}); see {run_dir / LOG_FILE}", flush=True)
        return outcome

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, jobs))


def _metrics_summary(run_dir: Path) -> dict[str, Any]:
    """What the run's metrics say; nothing when it never logged a step (it failed early) or its log is unreadable."""
    try:
        return summarize(read_run(run_dir))
    except KilnError:
        return {}


def summary_rows(outcomes: list[Outcome], grid_keys: list[str], out: Path) -> list[dict[str, Any]]:
    """One row per variation: its grid values, seed, status and what its metrics.jsonl says (None if absent)."""
    rows = []
    for outcome in outcomes:
        variation = outcome.variation
        run_dir = out / variation.name
        summary = _metrics_summary(run_dir)
        rows.append({"name": variation.name, **{k: variation.values[k] for k in grid_keys}, "seed": variation.seed,
                     "status": outcome.status, "exit_code": outcome.exit_code,
                     **{heading: summary.get(key) for key, heading in RESULT_COLUMNS}})
    return rows


def _markdown_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_summary(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """OUT/summary.csv (full precision, empty where a run did not log the metric) and OUT/summary.md."""
    columns = list(rows[0])
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(row[c]) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def sweep(base: str | Path, grid_specs: list[str], seeds: int = 1, parallel: int = 1, out: str | Path | None = None,
          extra: list[str] | None = None, dry_run: bool = False) -> int:
    """Plan, validate, run what is not finished, summarise. Exit code 1 when any variation failed."""
    if parallel < 1:
        raise KilnError(f"--parallel must be 1 or more, got {parallel}")
    extra = [arg for arg in (extra or []) if arg != "--"]
    grid = parse_grid(grid_specs)
    check_extra(extra, grid)
    first_seed = load_config(base, extra).trainer.seed
    variations = plan_sweep(grid, seeds, first_seed)
    steps = validate(base, variations, extra)
    out = Path(out) if out is not None else Path("sweeps") / Path(base).stem
    done = {v.name for v in variations if is_finished(out / v.name, steps[v.name])}
    jobs = [(v, train_command(base, v, extra, out / v.name), out / v.name) for v in variations if v.name not in done]
    print(f"kiln sweep: {len(variations)} variations in {out} ({len(done)} already finished), "
          f"{min(parallel, max(len(jobs), 1))} at a time", flush=True)
    if dry_run:
        for variation in variations:
            note = "  # finished, skipped" if variation.name in done else ""
            print(shlex.join(train_command(base, variation, extra, out / variation.name)) + note)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ran = {o.variation.name: o for o in run_variations(jobs, parallel)}
    outcomes = [ran.get(v.name) or Outcome(v, "done") for v in variations]
    csv_path, md_path = write_summary(summary_rows(outcomes, list(grid), out), out)
    print(md_path.read_text(), end="")
    print(f"wrote {csv_path} and {md_path}")
    failed = [o.variation.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(variations)} variations failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
