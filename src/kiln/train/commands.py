"""`kiln train [RECIPE] [--section.key=value ...]` and `kiln bench RECIPE`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from kiln.errors import KilnError
from kiln.train.config import load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (no arguments: the tiny OLMo 2 model on the built-in corpus)",
        description="Train from a YAML recipe with dotted overrides, e.g. "
        "kiln train recipes/tiny.yaml --optim.lr=1e-3. "
        "A run folder that already holds checkpoints is resumed from the newest.")
    p.add_argument("recipe", nargs="?", help="YAML recipe (default: the built-in main job)")
    p.add_argument("--resume", action="store_true", help="require a checkpoint to resume from")
    p.add_argument("--max-restarts", type=int, default=0, metavar="N",
                   help="rerun a crashed training process up to N times, resuming from its last checkpoint; restarts "
                   "are logged in RUN/restarts.jsonl (multi-process runs: use torchrun --max-restarts instead)")
    p.add_argument("--restart-backoff", type=float, default=5.0, metavar="S",
                   help="seconds before the first restart, doubled each time up to 300 (default 5)")
    p.set_defaults(func=run_train, accepts_overrides=True)

    b = subparsers.add_parser("bench", help="time training steps of a recipe: tokens/s, MFU, peak memory")
    b.add_argument("recipe", nargs="?", help="YAML recipe (default: the built-in main job)")
    b.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    b.add_argument("--warmup", type=int, default=5, help="untimed warm-up steps (default 5)")
    b.add_argument("--compare-bare", action="store_true",
                   help="also time a bare forward/backward/step loop on the same batches, alternating")
    b.set_defaults(func=run_bench, accepts_overrides=True)


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.recipe, args.overrides)
    if args.max_restarts > 0:
        return supervise_train(args, Path(cfg.trainer.run_dir))
    from kiln.train.run import train

    train(cfg, resume=True if args.resume else None)
    return 0


def supervise_train(args: argparse.Namespace, run_dir: Path) -> int:
    """Run training as a child process that is restarted when it crashes (the config was checked above)."""
    from kiln.faults.supervisor import supervise

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise KilnError("--max-restarts supervises a single process; under torchrun use its own --max-restarts")
    argv = ([args.recipe] if args.recipe else []) + (["--resume"] if args.resume else []) + args.overrides
    return supervise(argv, run_dir, args.max_restarts, backoff_s=args.restart_backoff)


def run_bench(args: argparse.Namespace) -> int:
    from kiln.train.bench import bench

    cfg = load_config(args.recipe, args.overrides)
    bench(cfg, steps=args.steps, warmup=args.warmup, compare_bare=args.compare_bare)
    return 0
