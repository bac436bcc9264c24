"""`kiln mup coord-check RECIPE`, `kiln mup transfer SWEEP_DIR` and `kiln mup duration SWEEP_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    mup = subparsers.add_parser("mup", help="muP: coordinate check, LR transfer across width, LR across duration",
                                description="Tools for muP (model.parametrization=mup); see docs/mup.md.")
    commands = mup.add_subparsers(dest="mup_command", metavar="COMMAND", required=True)
    c = commands.add_parser(
        "coord-check", help="train each width a few steps; do activations keep their size as width grows?",
        description="Train RECIPE at each width (d_ff in proportion) for a few steps at a constant LR, under each "
        "parametrization, and record the mean |x| of every block's attention and MLP outputs, residual stream and "
        "the logits. Writes OUT/coord_check.{md,json,png}; exits 1 when muP's slopes leave the band. Other "
        "--section.key=value arguments override the recipe.")
    c.add_argument("recipe", metavar="RECIPE.yaml")
    c.add_argument("--widths", type=_int_list, default=[64, 128, 256, 512, 1024], metavar="W1,W2,...",
                   help="d_model values (default 64,128,256,512,1024)")
    c.add_argument("--steps", type=int, default=5, help="optimizer steps recorded after step 0 (default 5)")
    c.add_argument("--seeds", type=int, default=3, help="seeds averaged per width (default 3)")
    c.add_argument("--parametrizations", default="standard,mup", metavar="P1,P2",
                   help="standard, mup or both (default standard,mup)")
    c.add_argument("--base-width", type=int, default=None,
                   help="muP's base width (default: the recipe's model.mup_base_d_model, else the smallest width)")
    c.add_argument("--lr", type=float, default=None, help="constant learning rate (default: the recipe's optim.lr)")
    c.add_argument("--band", type=float, default=None, help="allowed |slope| per doubling of width (default 0.25)")
    c.add_argument("--out", default="mup-coord-check", metavar="DIR", help="output folder (default mup-coord-check)")
    c.set_defaults(func=run_coord_check, accepts_overrides=True)

    _sweep_reader(commands, "transfer", run_transfer,
                  "optimal LR per width and parametrization from a kiln sweep, with a plot",
                  "Read a `kiln sweep` over optim.lr x model.d_model (x model.parametrization), fit each curve's "
                  "optimum (a quadratic in log LR around the best point) and report how far it moves with width.")
    d = _sweep_reader(commands, "duration", run_duration,
                      "optimal LR per training length from a kiln sweep; fit LR*(D) = B * D^-beta",
                      "Read a `kiln sweep` over optim.lr x trainer.steps at one width, fit each length's optimal LR "
                      "and the power law LR*(D) = B * D^-beta (D in tokens), with beta's uncertainty.")
    d.add_argument("--d-model", type=int, default=None, help="the width to use when the sweep has several")
    d.add_argument("--parametrization", default=None, help="the parametrization to use when the sweep has both")
    d.add_argument("--min-tokens", type=int, default=0, metavar="D",
                   help="fit only durations of at least D tokens (the shortest runs bend the power law)")


def _sweep_reader(commands: argparse._SubParsersAction, name: str, func, help: str,
                  description: str) -> argparse.ArgumentParser:
    """A command that reads SWEEP_DIR and writes NAME.{md,json,png} to --out."""
    parser = commands.add_parser(name, help=help, description=f"{description} Writes {name}.{{md,json,png}} in "
                                 "--out (default SWEEP_DIR/mup).")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR")
    parser.add_argument("--out", default=None, metavar="DIR")
    parser.set_defaults(func=func)
    return parser


def run_coord_check(args: argparse.Namespace) -> int:
    from kiln.mup.coord_check import DEFAULT_BAND, coord_check, write_coord_check

    parametrizations = tuple(p.strip() for p in args.parametrizations.split(",") if p.strip())
    result = coord_check(args.recipe, args.widths, args.steps, args.seeds, parametrizations, args.base_width, args.lr,
                         args.band or DEFAULT_BAND, args.overrides, report=lambda line: print(line, flush=True))
    path, text = write_coord_check(result, Path(args.out))
    print(text, end="")
    print(f"wrote {path} and coord_check.json, coord_check.png in {path.parent}")
    return 0 if all(result.passes(p) for p in parametrizations if p == "mup") else 1


def run_transfer(args: argparse.Namespace) -> int:
    from kiln.mup.report import write_transfer_report

    path, text = write_transfer_report(args.sweep_dir, args.out)
    print(text, end="")
    print(f"wrote {path} and transfer.json, transfer.png in {path.parent}")
    return 0


def run_duration(args: argparse.Namespace) -> int:
    from kiln.mup.report import write_duration_report

    path, text = write_duration_report(args.sweep_dir, args.out, args.d_model, args.parametrization, args.min_tokens)
    print(text, end="")
    print(f"wrote {path} and duration.json, duration.png in {path.parent}")
    return 0
