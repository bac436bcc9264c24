"""kiln eval vs lm-evaluation-harness (HF backend): the same model, the same requests, wall time side by side.

    python benchmarks/bench_eval.py [--model DIR] [--preset olmo2-20m] [--tasks ...] [--limit 40] [--repeats 3]

Without --model, a random-init `--preset` model with Kiln's built-in tokenizer is saved and exported to an HF
folder (the numbers need no training: both sides score the same weights). Kiln scores its own rendering of the
requests with its scorer on kiln's model; lm-eval's `HFLM.loglikelihood` gets the same (context, continuation)
strings on the exported HF model, the start token written as text, including the unconditional ("Answer:") pairs
kiln scores for PMI (`acc_uncond`), so both compute the same numbers. Both run in fp32 on the same
threads; the two alternate, in swapped order each round. Timed: tokenizing and scoring (not model loading or
rendering the prompts). Printed beside the times: the largest log-likelihood difference and each task's accuracy
from both.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kiln.eval.evaluate import prepare, score_examples, summarize
from kiln.eval.models import load_model
from kiln.eval.scoring import Scorer
from kiln.eval.tasks import parse_tasks

BUILTIN_TOKENIZER = Path(__file__).resolve().parents[1] / "src" / "kiln" / "assets" / "builtin_tokenizer.json"


def random_model(preset_name: str, out: Path) -> tuple[Path, Path]:
    """A kiln model folder and its HF export, random init, built-in tokenizer."""
    from tokenizers import Tokenizer

    from kiln.checkpoint import save_model_dir
    from kiln.hf.convert import export_hf
    from kiln.model.presets import preset
    from kiln.model.transformer import Transformer

    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(BUILTIN_TOKENIZER))
    model = Transformer(preset(preset_name, vocab_size=tok.get_vocab_size(), max_seq_len=2048))
    kiln_dir = save_model_dir(model, out / "kiln", tok)
    return kiln_dir, export_hf(kiln_dir, out / "hf")


def run_kiln(model_dir: Path, prepared: list, batch_size: int) -> tuple[float, list[float], list]:
    """Seconds, per-pair log-likelihoods in request order, and per-task results."""
    loaded = load_model(model_dir)
    start = time.perf_counter()
    examples = score_examples(prepared, loaded.encoder, Scorer(loaded.backend, batch_size))
    seconds = time.perf_counter() - start
    logprobs = [lp for task in examples for ex in task for lp in ex["logprobs"] + (ex["uncond_logprobs"] or [])]
    return seconds, logprobs, [summarize(p, ex, loaded.vocab_size) for p, ex in zip(prepared, examples)]


def lm_eval_requests(model_dir: Path, prepared: list) -> list:
    """Every (context, continuation) pair kiln scores, the unconditional ones PMI needs included, as an lm-eval
    Instance, with the start token kiln prepends written as text."""
    from lm_eval.api.instance import Instance

    loaded = load_model(model_dir)
    start_token = loaded.encoder.prefix
    prefix = _token_text(model_dir, start_token[0]) if start_token else ""
    pairs = [pair for p in prepared for request in p.requests for pair in request.pairs + (request.uncond or [])]
    return [Instance("loglikelihood", {}, (prefix + ctx, cont), i) for i, (ctx, cont) in enumerate(pairs)]


def _token_text(model_dir: Path, token_id: int) -> str:
    from kiln.checkpoint import load_checkpoint_tokenizer

    return load_checkpoint_tokenizer(model_dir).id_to_token(token_id)


def run_lm_eval(hf_dir: Path, requests: list, batch_size: int) -> tuple[float, list[float]]:
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=str(hf_dir), backend="causal", batch_size=batch_size, device="cpu", dtype="float32")
    start = time.perf_counter()
    out = lm.loglikelihood(requests, disable_tqdm=True)
    return time.perf_counter() - start, [logprob for logprob, _ in out]


def accuracies(prepared: list, logprobs: list[float]) -> list[float]:
    """Raw accuracy per task (first of ties) from per-pair log-likelihoods in request order."""
    out, i = [], 0
    for p in prepared:
        correct = 0
        for request in p.requests:
            scores = logprobs[i:i + len(request.pairs)]
            i += len(request.pairs) + len(request.uncond or [])
            correct += scores.index(max(scores)) == request.gold
        out.append(correct / len(p.requests))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="kiln model folder (exported to HF for lm-eval)")
    parser.add_argument("--preset", default="olmo2-20m", help="random-init model size when no --model")
    parser.add_argument("--tasks", default="hellaswag_rc_5shot,arc_easy_rc_5shot,piqa_rc_5shot,winogrande_rc_5shot")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kiln-bench-eval-") as tmp:
        if args.model:
            from kiln.hf.convert import export_hf

            kiln_dir, hf_dir = args.model, export_hf(args.model, Path(tmp) / "hf")
        else:
            kiln_dir, hf_dir = random_model(args.preset, Path(tmp))
        prepared = prepare(parse_tasks(args.tasks), args.limit, args.data_dir)
        requests = lm_eval_requests(kiln_dir, prepared)
        print(f"{len(prepared)} tasks, {sum(len(p.requests) for p in prepared)} examples, {len(requests)} pairs, "
              f"{torch.get_num_threads()} threads, batch size {args.batch_size}")
        times: dict[str, list[float]] = {"kiln": [], "lm-eval": []}
        for round_ in range(args.repeats):
            order = ("kiln", "lm-eval") if round_ % 2 == 0 else ("lm-eval", "kiln")
            for name in order:
                if name == "kiln":
                    seconds, ours, results = run_kiln(kiln_dir, prepared, args.batch_size)
                else:
                    seconds, theirs = run_lm_eval(hf_dir, requests, args.batch_size)
                times[name].append(seconds)
                print(f"round {round_ + 1} {name:<8} {seconds:8.2f} s", flush=True)
    report(prepared, times, ours, theirs, results)


def report(prepared: list, times: dict[str, list[float]], ours: list[float], theirs: list[float],
           results: list) -> None:
    diff = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    relative = max(abs(a - b) / max(abs(b), 1e-9) for a, b in zip(ours, theirs))
    kiln_acc, lm_acc = accuracies(prepared, ours), accuracies(prepared, theirs)
    rounds = [b / a for a, b in zip(times["kiln"], times["lm-eval"])]
    print(f"\nmax |log-likelihood difference| over {len(ours)} pairs: {diff:.2e} (relative {relative:.1e}; "
          f"log-likelihoods down to {min(theirs):.1f})")
    for p, a, b, result in zip(prepared, kiln_acc, lm_acc, results):
        assert a == result.metrics["acc_raw"]
        print(f"{p.task.name:<24} acc_raw kiln {a:.4f}  lm-eval {b:.4f}  {'equal' if a == b else 'DIFFERENT'}")
    kiln_s, lm_s = statistics.median(times["kiln"]), statistics.median(times["lm-eval"])
    print(f"median wall time: kiln {kiln_s:.2f} s, lm-eval {lm_s:.2f} s; kiln is {lm_s / kiln_s:.2f}x faster "
          f"(per round: {', '.join(f'{r:.2f}x' for r in rounds)})")


if __name__ == "__main__":
    main()
