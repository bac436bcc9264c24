"""`kiln sweep`: train every combination of a few config values (times seeds), then tabulate how stable each was.

Each variation is a plain `kiln train` subprocess in its own run folder, so one crash cannot take the others down,
a rerun skips the variations that finished, and an interrupted one resumes from its checkpoints like any run.
While they run, the parent reads the last line of each child's metrics.jsonl to show how far it is.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.config import parse_overrides
from kiln.errors import KilnError
from kiln.experiments.jobs import LINK, SEED_KEY, Job, Outcome, Variation
from kiln.experiments.runlog import METRICS_FILE, read_run, summarize
from kiln.experiments.sweep_progress import LOG_FILE, SweepProgress
from kiln.train.config import load_config

PROGRESS_MODES = ("auto", "bar", "lines")
# seconds between looks at the running children's metrics: a terminal bar is cheap to redraw, a log line is not
BAR_EVERY_S, LINES_EVERY_S = 1.0, 30.0
RUN_DIR_KEY = "trainer.run_dir"
# (summary key from kiln.experiments.runlog.summarize, column heading) after name, grid keys, seed and status
RESULT_COLUMNS = [
    ("final_val_loss", "final_val_loss"), ("spike_score_cum", "spike_score_cum"),
    ("max_grad_norm", "max_grad_norm"), ("skipped_steps", "skipped_steps"), ("final_loss", "final_train_loss"),
]
# shown only when some variation has them: bits per byte over the whole held-out split (eval.full_at_end), and
# the seconds `kiln train` took (absent for variations finished by an earlier sweep)
OPTIONAL_COLUMNS = ["held_out_bpb", "wall_s"]


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


def grid_config_keys(grid: dict[str, list[str]]) -> set[str]:
    """The config keys a grid sets, linked keys (`a:b`) counted one by one."""
    return {part for key in grid for part in key.split(LINK)}


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """`["optim.lr=1e-3,3e-3", ...]` -> {"optim.lr": ["1e-3", "3e-3"], ...}, in the order given.

    Linked keys move together, value by value: `model.d_model:model.d_ff=64:256,128:512` is two variations.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().removeprefix("--")
        values = split_values(text)
        if not sep or not key or "" in values:
            raise KilnError(f"--grid {spec!r} must look like section.key=value1,value2")
        if key in grid:
            raise KilnError(f"--grid names {key} twice; give all its values in one --grid {key}=v1,v2")
        parts = key.split(LINK)
        for value in values:
            if len(value.split(LINK)) != len(parts):
                raise KilnError(f"--grid {key} links {len(parts)} keys, so each value needs {len(parts)} parts "
                                f"joined by {LINK!r}; got {value!r}")
        if {SEED_KEY, RUN_DIR_KEY} & set(parts):
            raise KilnError(f"--grid cannot set {key}: the sweep sets it (use --seeds N for several seeds, counting up "
                            f"from the recipe's {SEED_KEY})")
        if len(set(values)) != len(values):
            raise KilnError(f"--grid {key} repeats a value: {text}")
        grid[key] = values
    return grid


def run_name(values: dict[str, str], seed: int) -> str:
    """A folder name that reads as the variation, `optim.lr-1e-3__model.qk_norm-none__seed-0`, with no character a
    shell or a tool would trip on (`=`, `/`, spaces and the like become `_`)."""
    parts = [f"{key}-{value}" for key, value in values.items()] + [f"seed-{seed}"]
    return re.sub(r"[^A-Za-z0-9._+,-]", "_", "__".join(parts))


def old_run_name(values: dict[str, str], seed: int) -> str:
    """The folder name kiln gave a variation before names lost their `=`: `optim.lr=1e-3__seed=0`."""
    parts = [f"{key}={value}" for key, value in values.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._=+,-]", "_", "__".join(parts))


def run_folder(out: Path, variation: Variation) -> Path:
    """OUT/<name>, or the folder an older kiln wrote for the variation when only that exists, so a sweep begun
    before the rename still skips, resumes and summarises its runs where they are."""
    new, old = out / variation.name, out / old_run_name(variation.values, variation.seed)
    return old if old.is_dir() and not new.exists() else new


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
    clash = sorted(_dotted_keys(parse_overrides(extra)) & ({RUN_DIR_KEY} | grid_config_keys(grid)))
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
        log.write(f"=== {datetime.now().isoformat(timespec='seconds')}: {shlex.join(command)}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
    return code, time.monotonic() - start


def _run_job(index: int, job: Job, display: SweepProgress) -> Outcome:
    display.started(index)
    code, seconds = _train(job.command, job.run_dir)
    outcome = Outcome(job.variation, job.run_dir, "ok" if code == 0 else "failed", code, seconds)
    display.finished(index, outcome)
    return outcome


def run_variations(jobs: list[Job], parallel: int = 1, progress: str = "auto",
                   every: float | None = None) -> list[Outcome]:
    """Run the jobs, `parallel` at a time, showing progress every `every` seconds; a failure does not stop the rest.

    `progress` is bar (tqdm), lines (plain lines, for CI and pipes) or auto (bar when stderr is a terminal).
    """
    if progress not in PROGRESS_MODES:
        raise KilnError(f"--progress must be one of {', '.join(PROGRESS_MODES)}, got {progress!r}")
    bar = progress == "bar" or (progress == "auto" and sys.stderr.isatty())
    display = SweepProgress(jobs, bar, every or (BAR_EVERY_S if bar else LINES_EVERY_S))
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(_run_job, index, job, display) for index, job in enumerate(jobs)]
            while wait(futures, timeout=display.every).not_done:
                display.poll()
    finally:
        display.close()
    return [future.result() for future in futures]


def _metrics_summary(run_dir: Path) -> dict[str, Any]:
    """What the run's metrics say; nothing when it never logged a step (it failed early) or its log is unreadable."""
    try:
        return summarize(read_run(run_dir))
    except KilnError:
        return {}


def summary_rows(outcomes: list[Outcome], grid_keys: list[str]) -> list[dict[str, Any]]:
    """One row per variation: its folder's name, grid values, seed, status and what its metrics.jsonl says (None
    if absent)."""
    rows = []
    for outcome in outcomes:
        variation = outcome.variation
        summary = _metrics_summary(outcome.run_dir)
        rows.append({"name": outcome.run_dir.name, **{k: variation.values[k] for k in grid_keys},
                     "seed": variation.seed, "status": outcome.status, "exit_code": outcome.exit_code,
                     **{heading: summary.get(key) for key, heading in RESULT_COLUMNS},
                     "held_out_bpb": summary.get("final_val_full_bpb"),
                     "wall_s": None if outcome.seconds is None else round(outcome.seconds, 1)})
    unused = [c for c in OPTIONAL_COLUMNS if all(row[c] is None for row in rows)]
    return [{k: v for k, v in row.items() if k not in unused} for row in rows]


def float_formats(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per column, the fewest significant digits, 6 or more, that print its distinct finite floats distinctly, so
    runs that differ only in the 6th digit (7.000086 against 7.000012) never look alike in summary.md."""
    formats = {}
    for column in rows[0]:
        values = {row[column] for row in rows if isinstance(row[column], float) and math.isfinite(row[column])}
        digits = next(d for d in range(6, 18) if len({f"{v:.{d}g}" for v in values}) == len(values))
        formats[column] = f".{digits}g"
    return formats


def _markdown_cell(value: Any, float_format: str) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, float_format)
    return str(value).replace("|", "\\|")


def write_summary(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """OUT/summary.csv (full precision, empty where a run did not log the metric) and OUT/summary.md."""
    columns = list(rows[0])
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    formats = float_formats(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_markdown_cell(row[c], formats[c]) for c in columns) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _note_old_folders(folders: dict[str, Path], out: Path) -> None:
    old = [folder.name for name, folder in folders.items() if folder.name != name]
    if old:
        print(f"kiln sweep: {len(old)} variations keep the folders an older kiln named for them in {out} "
              f"(e.g. {old[0]}); new folders are named like {next(iter(folders))}", flush=True)


def sweep(base: str | Path, grid_specs: list[str], seeds: int = 1, parallel: int = 1, out: str | Path | None = None,
          extra: list[str] | None = None, dry_run: bool = False, progress: str = "auto") -> int:
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
    folders = {v.name: run_folder(out, v) for v in variations}
    done = {v.name for v in variations if is_finished(folders[v.name], steps[v.name])}
    jobs = [Job(v, train_command(base, v, extra, folders[v.name]), folders[v.name], steps[v.name])
            for v in variations if v.name not in done]
    print(f"kiln sweep: {len(variations)} variations in {out} ({len(done)} already finished), "
          f"{min(parallel, max(len(jobs), 1))} at a time", flush=True)
    _note_old_folders(folders, out)
    if dry_run:
        for variation in variations:
            note = "  # finished, skipped" if variation.name in done else ""
            print(shlex.join(train_command(base, variation, extra, folders[variation.name])) + note)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ran = {o.variation.name: o for o in run_variations(jobs, parallel, progress)}
    outcomes = [ran.get(v.name) or Outcome(v, folders[v.name], "done") for v in variations]
    csv_path, md_path = write_summary(summary_rows(outcomes, list(grid)), out)
    print(md_path.read_text(), end="")
    print(f"wrote {csv_path} and {md_path}")
    failed = [o.run_dir.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"{len(failed)} of {len(variations)} variations failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0
