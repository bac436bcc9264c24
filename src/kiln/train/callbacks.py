"""Small stateful callbacks around the training loop: evaluation, checkpoints, metrics, progress, samples."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kiln.data.loader import IGNORE_INDEX, Batch
from kiln.distributed import barrier, is_rank0, sum_across_ranks, unwrap
from kiln.errors import KilnError
from kiln.train.checkpointing import (
    PendingSave,
    discard_checkpoints_after,
    list_checkpoints,
    prune_checkpoints,
    save_checkpoint,
)
from kiln.train.metrics_log import METRICS_FILE, trim_metrics
from kiln.train.trainer import Callback, NonFiniteLoss, Trainer

log = logging.getLogger("kiln.train")


class Evaluator(Callback):
    """Every `every` steps and at the end: validation loss, perplexity and bits per byte on held-out documents,
    beside the unigram baseline (`val_unigram_loss`) that a model ignoring context would reach.

    The periodic passes read the first `max_batches` batches, so they are cheap and comparable along the run; with
    `full_at_end` the last pass reads every held-out instance and adds `val_full_*`, the figure to compare runs by.
    """

    def __init__(self, val_loader, token_bytes: np.ndarray, every: int, max_batches: int,
                 unigram_loss: float | None = None, full_at_end: bool = False) -> None:
        self.val_loader, self.every, self.max_batches = val_loader, every, max_batches
        self.token_bytes = torch.as_tensor(token_bytes, dtype=torch.float64)
        self.unigram_loss, self.full_at_end = unigram_loss, full_at_end
        self.last: dict[str, float] = {}

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        step = trainer.state.step
        last_step = step == trainer.cfg.trainer.steps
        if (self.every and step % self.every == 0) or last_step:
            self.last = self.evaluate(trainer, full=last_step and self.full_at_end)
            metrics.update(self.last)

    @torch.no_grad()
    def evaluate(self, trainer: Trainer, full: bool = False) -> dict[str, float]:
        """Sums over every rank's share of the validation batches; all ranks take part (FSDP gathers weights).

        Bits per byte counts the nats of the targets that are text (special tokens such as EOS stand for no bytes
        and are left out of both sums), so it measures the text alone, whatever the tokenizer.
        """
        model = trainer.model
        model.eval()
        sums = [self.batch_sums(trainer, batch) for batch in self.rank_batches(whole=full)]
        model.train()
        head = sum_across_ranks(np.sum(sums[:self.max_batches], axis=0).tolist(), trainer.device)
        out = self.summarise(head, "val")
        if out["val_tokens"] == 0:
            raise KilnError("the validation split is empty; raise data.val_fraction or use more data")
        del out["val_tokens"]
        if full:
            out.update(self.summarise(sum_across_ranks(np.sum(sums, axis=0).tolist(), trainer.device), "val_full"))
        if self.unigram_loss is not None:
            out["val_unigram_loss"] = self.unigram_loss
        return out

    def batch_sums(self, trainer: Trainer, batch: Batch) -> list[float]:
        """[nats, tokens, nats of text tokens, bytes of text tokens] of one batch."""
        labels = batch.labels.to(trainer.device).flatten()
        doc_ids = batch.doc_ids.to(trainer.device) if trainer.cfg.data.intra_doc_masking else None
        with trainer.autocast():
            logits = trainer.model(batch.input_ids.to(trainer.device), doc_ids=doc_ids)
        token_nats = F.cross_entropy(logits.float().flatten(0, 1), labels, ignore_index=-100, reduction="none")
        keep = labels != -100
        token_bytes = self.token_bytes[labels[keep].cpu()]
        text_nats = token_nats[keep].double().cpu()[token_bytes > 0].sum().item()
        return [token_nats.sum().item(), float(keep.sum()), text_nats, float(token_bytes.sum())]

    @staticmethod
    def summarise(sums: list[float], prefix: str) -> dict[str, float]:
        """Loss, perplexity, bits per byte and target count from the summed `batch_sums` of all ranks."""
        nats, tokens, text_nats, n_bytes = sums
        loss = nats / max(tokens, 1)
        return {f"{prefix}_loss": loss, f"{prefix}_ppl": math.exp(min(loss, 50.0)),
                f"{prefix}_bpb": text_nats / math.log(2) / max(n_bytes, 1), f"{prefix}_tokens": tokens}

    def rank_batches(self, whole: bool = False) -> Iterator[Batch]:
        """This rank's first `max_batches` batches (`whole`: all of them), padded with all-ignored ones where the
        split ran out early.

        Every rank must run the same number of forward passes, or a sharded model waits forever for a gather.
        """
        loader = self.val_loader
        global_batches = -(-loader.instances_per_epoch // loader.global_batch_size)
        batches = iter(loader)
        for _ in range(global_batches if whole else min(self.max_batches, global_batches)):
            batch = next(batches, None)
            if batch is None:
                empty = torch.zeros(1, loader.seq_len, dtype=torch.long)
                batch = Batch(empty, torch.full_like(empty, IGNORE_INDEX), empty, torch.zeros(1, dtype=torch.long))
            yield batch


class Checkpointer(Callback):
    """Saves every `every` steps, at each of `keep_steps` and at the end, keeps the last `keep_last` (and every one of
    `keep_steps`); names the last good one on NaN.

    With `async_save`, the sharded state is written in the background and the step folder appears (and old ones
    are pruned) once it is complete; at most one save is in flight.
    """

    def __init__(self, run_dir: Path, every: int, keep_last: int, save_final: bool, loader, tokenizer,
                 config_yaml: str, stateful: dict[str, Any], async_save: bool = False,
                 keep_steps: Collection[int] = ()) -> None:
        self.run_dir, self.every, self.keep_last, self.save_final = run_dir, every, keep_last, save_final
        self.keep_steps = frozenset(keep_steps)
        self.loader, self.tokenizer, self.config_yaml, self.stateful = loader, tokenizer, config_yaml, stateful
        self.async_save, self.pending = async_save, None

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        step = trainer.state.step
        if self.pending is not None and self.pending.done():
            self.finish_pending()
        due = (self.every and step % self.every == 0) or step in self.keep_steps
        if due and step != trainer.cfg.trainer.steps:
            self.save(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.save_final or trainer.state.step in self.keep_steps:
            self.save(trainer)
        self.finish_pending()

    def save(self, trainer: Trainer) -> Path:
        self.finish_pending()
        state = {"step": trainer.state.step, "tokens": trainer.state.tokens, "lr_scale": trainer.state.lr_scale,
                 "rollbacks": trainer.state.rollbacks, "loader": self.loader.state_dict(),
                 "callbacks": {name: cb.state_dict() for name, cb in self.stateful.items()}}
        saved = save_checkpoint(self.run_dir, trainer.state.step, unwrap(trainer.model), trainer.optimizer, state,
                                self.tokenizer, self.config_yaml, async_save=self.async_save)
        if isinstance(saved, PendingSave):
            self.pending = saved
            return saved.final
        self._saved(saved)
        return saved

    def on_rollback(self, trainer: Trainer, restored_step: int, discarded: Path) -> None:
        """Checkpoints past the restored one hold the discarded updates: set them aside, an unfinished save too."""
        self.finish_pending()
        if is_rank0():
            discard_checkpoints_after(self.run_dir, restored_step, discarded)
        barrier()

    def finish_pending(self) -> None:
        if self.pending is not None:
            self._saved(self.pending.wait())
            self.pending = None

    def _saved(self, path: Path) -> None:
        if is_rank0():
            prune_checkpoints(self.run_dir, self.keep_last, self.keep_steps)
            log.info("saved checkpoint %s", path)

    def last_good(self) -> str:
        found = list_checkpoints(self.run_dir)
        return str(found[-1]) if found else "none (no checkpoint was written yet)"


class WatchdogCallback(Callback):
    """Runs `kiln.faults.watchdog.Watchdog`: the first callback, so a slow step is judged by data + forward +
    backward + update alone; the other callbacks (evaluation, checkpoint writes) are then watched for the hard
    timeout only, since their length has no typical value to compare with. So is a process's first step: it
    compiles and warms caches, and a resumed run (which restores the step times) would otherwise dump every
    thread's stack at each restart."""

    def __init__(self, cfg) -> None:
        from kiln.faults.watchdog import Watchdog

        self.enabled, self.first_step = cfg.enabled, True
        self.watchdog = Watchdog(slow_factor=cfg.slow_factor, hard_timeout_s=cfg.hard_timeout_s)

    def on_fit_start(self, trainer: Trainer) -> None:
        self.first_step = True
        if self.enabled:
            self.watchdog.start()

    def on_step_start(self, trainer: Trainer) -> None:
        self.watchdog.on_step_start(trainer.state.step + 1, warn_slow=not self.first_step)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.first_step = False
        self.watchdog.on_step_end(metrics["step_time"])
        self.watchdog.on_step_start(trainer.state.step, warn_slow=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.watchdog.stop()

    def state_dict(self) -> dict[str, Any]:
        return self.watchdog.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.watchdog.load_state_dict(state)


class MetricsWriter(Callback):
    """One JSON line per step in RUN/metrics.jsonl (and TensorBoard events as an option).

    It runs before the Checkpointer and fsyncs the line of every `durable_every`-th step (the checkpoint steps), so
    a checkpoint never commits before its step's line is on disk; `kiln.train.metrics_log` says why that suffices.
    """

    def __init__(self, run_dir: Path, tensorboard: bool, durable_every: int = 0) -> None:
        self.path = run_dir / METRICS_FILE
        self.tensorboard, self.writer, self.durable_every = tensorboard, None, durable_every

    def on_fit_start(self, trainer: Trainer) -> None:
        trim_metrics(self.path, trainer.state.step)  # steps past the checkpoint will be logged again
        self._open_tensorboard(trainer.state.step)

    def _open_tensorboard(self, step: int) -> None:
        if not self.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise KilnError("logging.tensorboard needs the tensorboard package: pip install tensorboard") from err
        if self.writer is not None:
            self.writer.close()
        self.writer = SummaryWriter(str(self.path.parent / "tensorboard"), purge_step=step + 1)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        with self.path.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
            if (self.durable_every and step % self.durable_every == 0) or step == trainer.cfg.trainer.steps:
                f.flush()
                os.fsync(f.fileno())
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def on_rollback(self, trainer: Trainer, restored_step: int, discarded: Path) -> None:
        """The steps after the restored checkpoint will run again: their lines move to the discarded folder."""
        removed = trim_metrics(self.path, restored_step)
        if removed:
            discarded.mkdir(parents=True, exist_ok=True)
            (discarded / METRICS_FILE).write_text("".join(line + "\n" for line in removed))
        self._open_tensorboard(restored_step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress(Callback):
    """A live bar (ETA, loss, tokens/s) on a terminal; plain log lines every `log_every` steps otherwise.

    While the bar is up, log records go through its writer, so a line such as "saved checkpoint" never lands in
    the middle of the bar.
    """

    def __init__(self, mode: str, log_every: int) -> None:
        self.bar_wanted = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.log_every, self.bar, self._redirect = log_every, None, None

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.bar_wanted:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm()
            self._redirect.__enter__()
            self.bar = tqdm(total=trainer.cfg.trainer.steps, initial=trainer.state.step, unit="step",
                            dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if "val_loss" in metrics:
            self._write(self.eval_line(metrics))
        if "val_full_bpb" in metrics:
            self._write(self.full_split_line(metrics))
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            self.bar.update(1)
        elif metrics["step"] % self.log_every == 0 or metrics["step"] == trainer.cfg.trainer.steps:
            mfu = f" mfu {metrics['mfu']:.1%}" if "mfu" in metrics else ""
            objects = f" object_loss {metrics['object_loss']:.4f}" if "object_loss" in metrics else ""
            self._write(f"step {metrics['step']}/{trainer.cfg.trainer.steps} loss {metrics['loss']:.4f}{objects} "
                        f"z {metrics['z_loss']:.2e} grad_norm {metrics['grad_norm']:.3f} lr {metrics['lr']:.2e} "
                        f"tokens {metrics['tokens']:,} tok/s {metrics['tokens_per_s']:,.0f}{mfu}")

    @staticmethod
    def eval_line(metrics: dict[str, Any]) -> str:
        """The validation loss, perplexity and bpb, then any other `val_` metric an evaluator added."""
        unigram = f" (unigram baseline {metrics['val_unigram_loss']:.4f})" if "val_unigram_loss" in metrics else ""
        parts = [f"val_loss {metrics['val_loss']:.4f}{unigram}"]
        parts += [f"{key} {metrics[key]:{fmt}}" for key, fmt in (("val_ppl", ".2f"), ("val_bpb", ".4f"))
                  if key in metrics]
        shown = {"val_loss", "val_unigram_loss", "val_ppl", "val_bpb"}
        parts += [f"{key} {value:.4f}" for key, value in metrics.items()
                  if key.startswith("val_") and key not in shown and not key.startswith("val_full_")]
        return f"step {metrics['step']}: " + " ".join(parts)

    @staticmethod
    def full_split_line(metrics: dict[str, Any]) -> str:
        """The end-of-run figure over every held-out token, the one to compare recipes by."""
        return (f"step {metrics['step']}: whole held-out split ({metrics['val_full_tokens']:,.0f} tokens): "
                f"val_loss {metrics['val_full_loss']:.4f} val_bpb {metrics['val_full_bpb']:.4f}")

    def on_rollback(self, trainer: Trainer, restored_step: int, discarded: Path) -> None:
        if self.bar is not None:
            self.bar.n = restored_step
            self.bar.refresh()

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self._redirect.__exit__(None, None, None)
            self.bar = None


class Sampler(Callback):
    """At the end of training, a few generated continuations in the log (and RUN/samples.txt).

    Every rank generates (a sharded model gathers its weights in each forward); only rank 0 writes and prints.
    """

    def __init__(self, run_dir: Path, tokenizer, prompts: list[str], n: int, max_new_tokens: int, seed: int) -> None:
        self.run_dir, self.tokenizer, self.prompts = run_dir, tokenizer, prompts[:n]
        self.max_new_tokens, self.seed = max_new_tokens, seed

    def on_fit_end(self, trainer: Trainer) -> None:
        from kiln.generate import generate_text

        if not self.prompts:
            return
        # FSDP in bf16 computes in bf16 while its (sharded) weights, and so the KV cache, stay fp32: cast them alike.
        fsdp_bf16 = trainer.cfg.trainer.precision == "bf16" and trainer.autocast_dtype is None
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=fsdp_bf16):
            texts = generate_text(unwrap(trainer.model), self.tokenizer, self.prompts, self.max_new_tokens,
                                  temperature=0.8, top_k=50, seed=self.seed)
        if not is_rank0():
            return
        (self.run_dir / "samples.txt").write_text("\n\n---\n\n".join(texts) + "\n")
        for text in texts:
            print(f"--- sample ---\n{text}", flush=True)


def describe_nan(err: NonFiniteLoss, checkpointer: Checkpointer | None) -> str:
    last = checkpointer.last_good() if checkpointer else "none"
    return f"{err}; the last good checkpoint is {last}"
