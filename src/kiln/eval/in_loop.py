"""Downstream task metrics during training (`eval.downstream`), logged as `downstream/{task}/{metric}`.

Every rank scores its share of the examples with the wrapped model; with several ranks, each batch makes the same
forward calls on every rank (ranks that ran out make empty ones), because a sharded model gathers its weights in
every forward. One process scores as `kiln eval` does.
The requests are rendered once, when the run starts, so missing data fails before the first step.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from kiln.distributed import gather_objects, max_across_ranks, rank, unwrap, world_size
from kiln.eval.backends import KilnBackend
from kiln.eval.evaluate import prepare, score_examples, summarize
from kiln.eval.scoring import PairEncoder, Scorer
from kiln.eval.tasks import parse_tasks
from kiln.train.trainer import Callback, Trainer

log = logging.getLogger("kiln.train")


class DownstreamEvaluator(Callback):
    """Every `every` steps and at the end: each task's metrics on its first `limit` examples."""

    def __init__(self, task_names: list[str], limit: int, every: int, tokenizer, batch_size: int = 16,
                 data_dir: str | Path | None = None) -> None:
        from kiln.data.tokenizer import eos_id

        self.every, self.batch_size = every, batch_size
        self.prepared = prepare(parse_tasks(task_names), limit, data_dir)
        encode = lambda texts: [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]
        self.encoder = PairEncoder(encode, eos_id(tokenizer))

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        step = trainer.state.step
        if (self.every and step % self.every == 0) or step == trainer.cfg.trainer.steps:
            results = self.evaluate(trainer)
            metrics.update(results)
            if rank() == 0:
                log.info("step %d: %s", step, self.summary_line(results))

    def summary_line(self, results: dict[str, float]) -> str:
        """Each task's primary metric beside its chance level, e.g. "hellaswag_rc_5shot acc_per_char 0.27 (0.25)"."""
        parts = []
        for prepared in self.prepared:
            task, key = prepared.task, f"downstream/{prepared.task.name}"
            value, chance = results[f"{key}/{task.primary_metric}"], results[f"{key}/chance"]
            parts.append(f"{task.name} {task.primary_metric} {value:.4f} (chance {chance:.4f})")
        return "downstream " + ", ".join(parts) + f" in {results['downstream_time_s']:.1f} s"

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        """Metrics of every task over all ranks' shares, identical on every rank."""
        start = time.perf_counter()
        backend = _TrainingBackend(trainer)
        trainer.model.eval()
        try:
            with trainer.autocast():
                sync = (lambda n: int(max_across_ranks([n], trainer.device)[0])) if world_size() > 1 else None
                mine = score_examples(self.prepared, self.encoder, Scorer(backend, self.batch_size),
                                      shard=(rank(), world_size()), sync=sync)
        finally:
            trainer.model.train()
        gathered = gather_objects(mine)
        out: dict[str, float] = {}
        for i, prepared in enumerate(self.prepared):
            examples = [ex for share in gathered for ex in share[i]]
            result = summarize(prepared, examples, backend.vocab_size)
            prefix = f"downstream/{prepared.task.name}"
            out.update({f"{prefix}/{name}": value for name, value in result.metrics.items()})
            out[f"{prefix}/chance"] = result.chance
        out["downstream_time_s"] = time.perf_counter() - start
        return out


class _TrainingBackend(KilnBackend):
    """kiln's backend calling the wrapped model (DDP, FSDP or compiled), caching in the dtype it computes in."""

    def __init__(self, trainer: Trainer) -> None:
        inner = unwrap(trainer.model)
        self.model, self.cfg = trainer.model, inner.cfg
        self.max_length, self.vocab_size, self.device = inner.cfg.max_seq_len, inner.cfg.vocab_size, trainer.device
        self.cache_dtype = torch.bfloat16 if trainer.cfg.trainer.precision == "bf16" else torch.float32
