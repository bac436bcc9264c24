"""`kiln ladder run SPEC --out DIR`, `kiln ladder fit DIR` and `kiln ladder predict DIR --n N --tokens D`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    ladder = subparsers.add_parser("ladder", help="scaling ladder: small runs that predict a bigger one's loss",
                                   description="Train a ladder of small models, fit a scaling law to them and predict "
                                   "a bigger run; see docs/ladder.md.")
    commands = ladder.add_subparsers(dest="ladder_command", metavar="COMMAND", required=True)
    r = commands.add_parser("run", help="train (or resume) every rung of a ladder spec",
                            description="Expand SPEC into rungs (shape, LR and batch from N), write each run's recipe "
                            "under DIR/<rung>/<k>xC/ and train them: each size's main run first (largest first), "
                            "then the decay branches forked from its checkpoints. Finished runs are skipped.")
    r.add_argument("spec", metavar="SPEC.yaml")
    r.add_argument("--out", required=True, metavar="DIR", help="the ladder folder")
    r.add_argument("--parallel", type=int, default=1, metavar="N",
                   help="runs trained at once (default 1; on CPU set train.trainer.threads in the spec)")
    r.add_argument("--progress", choices=["auto", "bar", "lines"], default="auto",
                   help="a tqdm bar, plain lines every 30 s, or auto: a bar on a terminal (default)")
    r.add_argument("--dry-run", action="store_true", help="print the plan; write and run nothing")
    r.set_defaults(func=run_run)

    f = commands.add_parser("fit", help="fit the scaling law to a ladder's runs; check it on the held-out runs",
                            description="Fit L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3) to the "
                            "rungs' final validation loss and to each task's bpb, and a sigmoid from task bpb to "
                            "accuracy; compare the predictions with the held-out runs. Writes fit.json, fit.md, "
                            "results.csv and plots in --out (default DIR).")
    f.add_argument("ladder_dir", metavar="DIR")
    f.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: the ladder folder)")
    f.add_argument("--samples", type=int, default=200, help="bootstrap resamples (default 200)")
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    f.add_argument("--level", type=float, default=0.9, help="interval coverage (default 0.9)")
    f.add_argument("--flops", type=_float_list, default=None, metavar="C1,C2",
                   help="FLOP budgets for the compute-optimal N and D (default: the largest run's, x10, x100)")
    f.set_defaults(func=run_fit)

    p = commands.add_parser("predict", help="the fitted law's loss, task bpb and accuracy at N parameters, D tokens",
                            description="Read DIR/fit.json (from kiln ladder fit) and print the predictions with their "
                            "bootstrap intervals.")
    p.add_argument("ladder_dir", metavar="DIR", help="a ladder folder (or the --out of kiln ladder fit)")
    p.add_argument("--n", type=float, required=True, help="non-embedding parameters, e.g. 1.3e6")
    p.add_argument("--tokens", type=float, required=True, help="training tokens D, e.g. 2.6e7")
    p.add_argument("--level", type=float, default=0.9, help="interval coverage (default 0.9)")
    p.set_defaults(func=run_predict)


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def run_run(args: argparse.Namespace) -> int:
    from kiln.errors import KilnError
    from kiln.ladder.runner import run_ladder

    if args.parallel < 1:
        raise KilnError(f"--parallel must be 1 or more, got {args.parallel}")
    return run_ladder(args.spec, args.out, args.parallel, args.progress, args.dry_run)


def run_fit(args: argparse.Namespace) -> int:
    from kiln.ladder.report import write_fit

    report = write_fit(args.ladder_dir, args.out, args.samples, args.seed, args.level, args.flops)
    print(report.read_text(), end="")
    print(f"wrote {report} and its plots, fit.json and results.csv in {report.parent}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from kiln.ladder.report import load_fit, predict, prediction_lines

    print("\n".join(prediction_lines(predict(load_fit(args.ladder_dir), args.n, args.tokens, args.level))))
    return 0
