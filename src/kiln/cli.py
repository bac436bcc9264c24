"""The `kiln` command. Each sub-command lives beside the code it drives, in a module with `register()`."""

from __future__ import annotations

import argparse
import importlib
import sys

from kiln.config import split_overrides
from kiln.errors import KilnError

# Each module defines `register(subparsers)`, adding its commands with `set_defaults(func=...)`;
# `func(args)` returns the exit code.
COMMAND_MODULES = [
    "kiln.model.commands",
    "kiln.data.commands",
    "kiln.train.commands",
    "kiln.hf.commands",
    "kiln.generate.commands",
    "kiln.eval.commands",
    "kiln.faults.commands",
    "kiln.experiments.commands",
    "kiln.mup.commands",
    "kiln.ladder.commands",
    "kiln.vlm.commands",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Open pretraining of OLMo-family language models.",
                                     epilog="Run `kiln COMMAND --help` for a command's options.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 0
    rest, overrides = split_overrides(argv)
    args, extra = parser.parse_known_args(rest)
    if (overrides or extra) and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(overrides + extra)}")
    args.overrides = overrides + extra
    try:
        return int(args.func(args) or 0)
    except KilnError as err:
        print(f"kiln {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
