"""`kiln report RUN [RUN ...]` and `kiln sweep BASE.yaml --grid key=v1,v2 ...`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser(
        "report", help="plots and a one-file HTML page of runs' loss, grad norm, spikes and per-layer norms",
        description="Plot one run, or overlay several for comparison, from their metrics.jsonl. Writes PNGs and "
        "report.html (the PNGs embedded, so the one file can be mailed).")
    r.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders (trainer.run_dir); a sweep folder stands for all the runs in it")
    r.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default RUN/report for one folder, reports/<timestamp> for several)")
    r.add_argument("--smooth", type=int, default=1, metavar="N",
                   help="draw the N-step moving average of loss and grad norm over the faint raw curve (default 1)")
    r.set_defaults(func=run_report)

    s = subparsers.add_parser(
        "sweep", help="train every combination of config values (x seeds) and tabulate stability",
        description="Run `kiln train BASE --key=value ...` for each point of the grid, each in OUT/<name> (e.g. "
        "OUT/optim.lr-1e-3__seed-0, its output in train.log there), then write OUT/summary.csv and OUT/summary.md. "
        "Other --section.key=value arguments apply to every variation. Finished variations are skipped, so rerunning "
        "an interrupted sweep continues it.")
    s.add_argument("base", metavar="BASE.yaml", help="the recipe every variation starts from")
    s.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                   help="a config key and its values, e.g. optim.lr=1e-3,3e-3; repeat for a product of several keys; "
                   "keys joined by ':' move together: model.d_model:model.d_ff=64:256,128:512")
    s.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="seeds per grid point, counting up from the recipe's trainer.seed (default 1)")
    s.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="variations trained at once (default 1; on CPU also set --trainer.threads)")
    s.add_argument("--out", default=None, metavar="DIR", help="sweep folder (default sweeps/<BASE name>)")
    s.add_argument("--dry-run", action="store_true", help="check the configs and print the commands; run nothing")
    s.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="how running variations' steps show: a tqdm bar, plain lines every 30 s (for CI and pipes), "
                   "or auto: a bar on a terminal (default)")
    s.set_defaults(func=run_sweep, accepts_overrides=True)


def run_report(args: argparse.Namespace) -> int:
    from kiln.experiments.report import write_report

    page = write_report(args.runs, args.out, args.smooth)
    print(f"wrote {page} and its PNGs in {page.parent}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from kiln.experiments.sweep import sweep

    return sweep(args.base, args.grid, args.seeds, args.parallel, args.out, args.overrides, args.dry_run,
                 args.progress)
