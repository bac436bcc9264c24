"""`kiln ladder run`: every rung's runs as plain `kiln train` subprocesses, main runs first, then their branches.

OUT/ladder.yaml is the spec, OUT/plan.json the expanded plan (what `fit` reads), and OUT/<rung>/<k>xC/ each run
folder with its recipe.yaml. A rerun skips finished runs and resumes interrupted ones from their checkpoints.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import yaml

from kiln.config import merge
from kiln.errors import KilnError
from kiln.experiments.jobs import Job, Variation
from kiln.experiments.sweep import is_finished, run_variations
from kiln.ladder.spec import LadderSpec, Rung, RunPlan, format_count, load_spec, plan_ladder, run_overrides
from kiln.train.config import load_config

PLAN_FILE, SPEC_FILE, RECIPE_FILE = "plan.json", "ladder.yaml", "recipe.yaml"


def run_dir(out: Path, rung: Rung, run: RunPlan) -> Path:
    return out / rung.name / run.name


def write_recipe(spec: LadderSpec, rung: Rung, run: RunPlan, out: Path, seq_len: int) -> Path:
    """The run's whole recipe, checked by loading it, in its folder: `kiln train` runs exactly this."""
    folder = run_dir(out, rung, run)
    recipe = merge(spec.train, run_overrides(spec, rung, run, folder, run_dir(out, rung, rung.main), seq_len))
    load_config(None, recipe)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECIPE_FILE
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def plan_table(rungs: list[Rung], seq_len: int) -> str:
    """One line per rung: N, shape, LR, batch and its runs' lengths."""
    lines = [f"{'rung':<8} {'N':>9} {'layers':>6} {'d_model':>7} {'LR':>8} {'batch':>7}  runs (tokens)"]
    for rung in rungs:
        runs = ", ".join(f"{run.name} {format_count(run.steps * rung.sequences * seq_len)}" for run in rung.runs)
        lines.append(f"{rung.name:<8} {rung.n:>9,} {rung.model['n_layers']:>6} {rung.model['d_model']:>7} "
                     f"{rung.lr:>8.4f} {rung.sequences * seq_len:>7,}  {runs}{'  (held out)' if rung.heldout else ''}")
    return "\n".join(lines)


def save_plan(out: Path, spec_path: Path, rungs: list[Rung], seq_len: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if (out / SPEC_FILE).resolve() != spec_path.resolve():
        shutil.copyfile(spec_path, out / SPEC_FILE)
    plan = {"seq_len": seq_len, "rungs": [asdict(rung) for rung in rungs]}
    (out / PLAN_FILE).write_text(json.dumps(plan, indent=1))


def load_plan(out: Path) -> tuple[list[Rung], int]:
    path = out / PLAN_FILE
    if not path.is_file():
        raise KilnError(f"{out} holds no {PLAN_FILE}: it is not a ladder folder (make one with kiln ladder run)")
    plan = json.loads(path.read_text())
    rungs = [Rung(**{**r, "runs": [RunPlan(**run) for run in r["runs"]]}) for r in plan["rungs"]]
    return rungs, plan["seq_len"]


def _job(rung: Rung, run: RunPlan, out: Path, recipe: Path) -> Job:
    command = [sys.executable, "-m", "kiln", "train", str(recipe)]
    return Job(Variation(f"{rung.name}/{run.name}", {}, 0), command, run_dir(out, rung, run), run.steps)


def run_ladder(spec_path: str | Path, out: str | Path, parallel: int = 1, progress: str = "auto",
               dry_run: bool = False) -> int:
    """Plan, write every recipe, then train: main runs (largest first), then branches. Exit 1 if any run failed."""
    spec_path, out = Path(spec_path), Path(out)
    spec = load_spec(spec_path)
    seq_len = load_config(None, spec.train).data.seq_len
    rungs = plan_ladder(spec)
    print(plan_table(rungs, seq_len), flush=True)
    if dry_run:
        return 0
    save_plan(out, spec_path, rungs, seq_len)
    phases: list[list[Job]] = [[], []]
    for rung in sorted(rungs, key=lambda r: -r.n):
        for run in rung.runs:
            recipe = write_recipe(spec, rung, run, out, seq_len)
            if not is_finished(run_dir(out, rung, run), run.steps):
                phases[run.fork_step is not None].append(_job(rung, run, out, recipe))
    total = sum(len(rung.runs) for rung in rungs)
    print(f"kiln ladder: {total} runs in {out}, {total - len(phases[0]) - len(phases[1])} already finished; "
          f"{len(phases[0])} main runs, then {len(phases[1])} branches, {parallel} at a time", flush=True)
    failed = []
    for jobs in phases:
        outcomes = run_variations(jobs, parallel, progress) if jobs else []
        failed += [o.variation.name for o in outcomes if o.status == "failed"]
        if failed:  # a branch needs its main run's checkpoint
            break
    if failed:
        print(f"kiln ladder: {len(failed)} runs failed: {', '.join(failed)} (see train.log in each folder)",
              file=sys.stderr)
        return 1
    print(f"kiln ladder: every run finished; fit with: kiln ladder fit {out}", flush=True)
    return 0
