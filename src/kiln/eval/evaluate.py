"""Run tasks: rows -> rendered requests -> token pairs -> scores -> per-example metrics -> task results.

Used by `kiln eval` on one process and by the in-loop callback on every rank's share of the examples.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.eval.formats import format_row
from kiln.eval.metrics import chance_accuracy, chance_bpb, task_means
from kiln.eval.metrics import example_metrics as compute_example_metrics
from kiln.eval.scoring import Encoded, PairEncoder, Score, Scorer
from kiln.eval.sources import load_rows
from kiln.eval.tasks import Request, Task


@dataclass
class Prepared:
    """One task's requests, ready to score, with where its rows came from and a digest of what is scored."""

    task: Task
    requests: list[Request]
    origin: str
    fingerprint: str


@dataclass
class TaskResult:
    task: Task
    metrics: dict[str, float]
    n: int
    chance: float
    truncated: int
    origin: str
    fingerprint: str
    examples: list[dict] = field(default_factory=list)

    @property
    def primary(self) -> float:
        return self.metrics[self.task.primary_metric]

    def summary(self) -> dict:
        return {"primary_metric": self.task.primary_metric, "primary": self.primary, "metrics": self.metrics,
                "n": self.n, "chance": self.chance, "truncated": self.truncated, "format": self.task.format,
                "shots": self.task.shots, "source": self.task.source, "data": self.origin,
                "data_fingerprint": self.fingerprint}


def prepare(tasks: list[Task], limit: int | None = None, data_dir: str | Path | None = None) -> list[Prepared]:
    """Every task's requests; rows are read once per dataset even when several tasks use it."""
    rows_cache: dict[str, object] = {}
    prepared = []
    for task in tasks:
        if task.family.name not in rows_cache:
            rows_cache[task.family.name] = load_rows(task.family, data_dir, limit)
        rows = rows_cache[task.family.name]
        requests = [task.request(format_row(task.family.name, row, i)) for i, row in enumerate(rows.rows)]
        prepared.append(Prepared(task, requests, rows.origin, _fingerprint(requests)))
    return prepared


def _fingerprint(requests: list[Request]) -> str:
    digest = hashlib.sha256()
    for request in requests:
        digest.update(json.dumps([request.pairs, request.gold], ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()[:16]


def score_examples(prepared: list[Prepared], encoder: PairEncoder, scorer: Scorer,
                   progress: Callable[[int], None] | None = None, shard: tuple[int, int] = (0, 1),
                   sync: Callable[[int], int] | None = None) -> list[list[dict]]:
    """Per task, the scored examples of this rank's share (`shard` = (rank, world)); all tasks in one pass, so
    contexts shared between tasks (the unconditional "Answer:") are run once."""
    rank, world = shard
    mine = [p.requests[rank::world] for p in prepared]
    encoded = [[_encode_request(encoder, r) for r in requests] for requests in mine]
    pairs = [pair for task_enc in encoded for enc, uncond in task_enc for pair in enc + (uncond or [])]
    scores = scorer.score(pairs, progress, sync)
    return [
        [_example(r, enc, uncond, scores) for r, (enc, uncond) in zip(requests, task_enc)]
        for requests, task_enc in zip(mine, encoded)
    ]


def count_pairs(prepared: list[Prepared], shard: tuple[int, int] = (0, 1)) -> int:
    """How many distinct (context, continuation) pairs this rank scores: the progress bar's total."""
    rank, world = shard
    return len({pair for p in prepared for r in p.requests[rank::world] for pair in r.pairs + (r.uncond or [])})


def _encode_request(encoder: PairEncoder, request: Request) -> tuple[list[Encoded], list[Encoded] | None]:
    encoded = encoder.encode(request.pairs + (request.uncond or []))
    n = len(request.pairs)
    return encoded[:n], (encoded[n:] if request.uncond else None)


def _example(request: Request, enc: list[Encoded], uncond: list[Encoded] | None,
             scores: dict[Encoded, Score]) -> dict:
    conts = [cont for _, cont in request.pairs]
    own = [scores[e] for e in enc]
    uncond_lp = [scores[e].logprob for e in uncond] if uncond else None
    logprobs, tokens = [s.logprob for s in own], [s.tokens for s in own]
    return {
        "doc_id": request.doc_id, "gold": request.gold, "continuations": conts, "logprobs": logprobs,
        "tokens": tokens, "uncond_logprobs": uncond_lp, "truncated": any(s.truncated for s in own),
        "metrics": compute_example_metrics(conts, logprobs, tokens, request.gold, uncond_lp),
    }


def summarize(prepared: Prepared, examples: list[dict], vocab_size: int) -> TaskResult:
    """The task's means over `examples` (all ranks' shares gathered), its chance level and truncation count."""
    means = task_means([ex["metrics"] for ex in examples])
    if prepared.task.format == "bpb":
        chance = chance_bpb([ex["tokens"][0] for ex in examples], [ex["continuations"][0] for ex in examples],
                            vocab_size)
    else:
        chance = chance_accuracy([len(ex["continuations"]) for ex in examples])
    truncated = sum(ex["truncated"] for ex in examples)
    return TaskResult(prepared.task, means, len(examples), chance, truncated, prepared.origin, prepared.fingerprint,
                      examples)
