"""`kiln train [RECIPE] [--section.key=value ...]` and `kiln bench RECIPE`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kiln.errors import KilnError
from kiln.train.config import MAIN_JOB_RECIPE, config_yaml, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (no arguments: the tiny OLMo 2 model on the built-in corpus)",
        description="Train from a YAML recipe with dotted overrides, e.g. "
        "kiln train recipes/tiny.yaml --optim.lr=1e-3. "
        "A run folder that already holds checkpoints is resumed from the newest. "
        "Every key, its value and what it means: kiln train --print-config [RECIPE] [overrides].")
    p.add_argument("recipe", nargs="?", help="YAML recipe (default: the main job, kiln/assets/main_job.yaml)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (every key, its value and its doc) as YAML and exit")
    p.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    p.add_argument("--max-restarts", type=int, default=0, metavar="N",
                   help="rerun a crashed training process up to N times, resuming from its last checkpoint; restarts "
                   "are logged in RUN/restarts.jsonl (multi-process runs: use torchrun --max-restarts instead)")
    p.add_argument("--restart-backoff", type=float, default=5.0, metavar="S",
                   help="seconds before the first restart, doubled each time up to 300 (default 5)")
    p.set_defaults(func=run_train, accepts_overrides=True)

    b = subparsers.add_parser("bench", help="time training steps of a recipe: tokens/s, MFU, peak memory")
    b.add_argument("recipe", nargs="?", help="YAML recipe (default: the main job, kiln/assets/main_job.yaml)")
    b.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    b.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    b.add_argument("--compare-bare", action="store_true",
                   help="also time a bare forward/backward/step loop on the same batches, alternating")
    b.set_defaults(func=run_bench, accepts_overrides=True)


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.recipe or MAIN_JOB_RECIPE, args.overrides)
    if args.print_config:
        print(config_yaml(cfg), end="")
        return 0
    if args.max_restarts > 0:
        return supervise_train(args, Path(cfg.trainer.run_dir))
    from kiln.train.run import train

    try:
        train(cfg, resume=True if args.resume else None)
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            print(resume_hint(Path(cfg.trainer.run_dir), cfg.checkpoint.every), file=sys.stderr, flush=True)
        return 130
    return 0


def resume_hint(run_dir: Path, checkpoint_every: int) -> str:
    """What Ctrl-C leaves: the step reached and the checkpoint that running the same command resumes from."""
    from kiln.train.checkpointing import list_checkpoints

    step = _last_logged_step(run_dir)
    where = "interrupted" if step is None else f"interrupted at step {step}"
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return (f"{where}, before the first checkpoint (checkpoint.every={checkpoint_every}); "
                "running the same command again starts from step 0")
    return f"{where}; run the same command again to resume from {checkpoints[-1]} (the newest checkpoint)"


def _last_logged_step(run_dir: Path) -> int | None:
    """The last step in RUN/metrics.jsonl, or None when there is none to read."""
    from kiln.train.metrics_log import METRICS_FILE, parse_metrics

    try:
        records, _ = parse_metrics(run_dir / METRICS_FILE)
    except (OSError, KilnError):
        return None
    return int(records[-1][1]["step"]) if records else None


def supervise_train(args: argparse.Namespace, run_dir: Path) -> int:
    """Run training as a child process that is restarted when it crashes (the config was checked above)."""
    from kiln.distributed import launched_ranks
    from kiln.faults.supervisor import supervise

    if launched_ranks() > 1:
        raise KilnError("--max-restarts supervises a single process; under torchrun use its own --max-restarts")
    argv = ([args.recipe] if args.recipe else []) + (["--resume"] if args.resume else []) + args.overrides
    return supervise(argv, run_dir, args.max_restarts, backoff_s=args.restart_backoff)


def run_bench(args: argparse.Namespace) -> int:
    from kiln.train.bench import bench

    cfg = load_config(args.recipe or MAIN_JOB_RECIPE, args.overrides)
    bench(cfg, steps=args.steps, warmup=args.warmup, compare_bare=args.compare_bare)
    return 0
