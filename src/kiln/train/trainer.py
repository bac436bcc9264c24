"""The training loop. Everything that is not forward/backward/step is a callback (`kiln.train.callbacks`)."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kiln.distributed import clip_grad_norm, grad_sync, sum_across_ranks
from kiln.errors import KilnError
from kiln.optim.schedule import lr_multiplier
from kiln.train.config import TrainConfig
from kiln.train.flops import format_flops, remeasure_cpu_peak
from kiln.train.loss import chunked_loss_terms, loss_terms

log = logging.getLogger("kiln.train")


class Callback:
    """No-op hooks, in the order the trainer calls them; subclasses override what they need."""

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_step_start(self, trainer: Trainer) -> None:
        pass

    def before_optimizer_step(self, trainer: Trainer, loss: float, grad_norm: float) -> bool:
        """Gradients are ready; return True to skip this update (skip-step)."""
        return False

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        pass

    def on_rollback(self, trainer: Trainer, restored_step: int, discarded: Path) -> None:
        """The run went back to its checkpoint of `restored_step`; keep what is set aside under `discarded`."""

    def on_fit_end(self, trainer: Trainer) -> None:
        pass


class NonFiniteLoss(KilnError):
    """The loss became NaN or infinite."""


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    lr_scale: float = 1.0  # lowered by each rollback, saved with checkpoints
    rollbacks: int = 0  # rollbacks so far, saved with checkpoints so stability.max_rollbacks holds across restarts


class Trainer:
    """Runs `cfg.trainer.steps` optimizer steps, each over `grad_accum` micro-batches."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                 batches: Iterator, device: torch.device, callbacks: list[Callback], flops_per_token: int,
                 peak_flops: float | None = None, world_size: int = 1) -> None:
        self.cfg, self.model, self.optimizer, self.batches = cfg, model, optimizer, batches
        self.device, self.callbacks, self.world_size = device, callbacks, world_size
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.peak_source = "configured peak" if peak_flops else "no peak (MFU off)"  # words for the run header
        self._peak_rechecked = False  # MFU above 100% has been looked into
        self.state = TrainState()
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.last_batches: list = []  # the current step's micro-batches, for spike forensics
        self.rollback_handler = None  # (trainer, reason, before_step) -> (restored step, discarded folder)
        self._rollback: tuple[str, int | None] | None = None
        self.autocast_dtype = torch.bfloat16 if cfg.trainer.precision == "bf16" else None  # None: FSDP casts
        self.loss_chunk = 0  # rows per block of the chunked loss, 0 = whole logits (kiln.train.loss.loss_chunk_rows)

    @property
    def total(self) -> int:
        """Length of the run in the schedule's units."""
        steps = self.cfg.trainer.steps
        return steps if self.cfg.schedule.units == "steps" else steps * self.cfg.tokens_per_step * self.world_size

    def fit(self) -> None:
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while self.state.step < self.cfg.trainer.steps:
            start = time.perf_counter()
            for cb in self.callbacks:
                cb.on_step_start(self)
            self.last_batches = [next(self.batches) for _ in range(self.cfg.trainer.grad_accum)]
            try:
                metrics = self.train_step(self.last_batches)
            except NonFiniteLoss as err:
                self.handle_rollback(str(err), None, err)
                continue
            metrics["step_time"] = time.perf_counter() - start
            metrics.update(self.throughput(metrics["step_time"]))
            for cb in self.callbacks:
                cb.on_step_end(self, metrics)
            if self._rollback is not None:
                self.handle_rollback(*self._rollback)
        for cb in self.callbacks:
            cb.on_fit_end(self)

    def train_step(self, micro_batches: list) -> dict[str, Any]:
        tokens_this_step = sum(b.input_ids.numel() for b in micro_batches) * self.world_size
        progress = self.state.step + 1 if self.cfg.schedule.units == "steps" else self.state.tokens + tokens_this_step
        lr = self.set_lr(lr_multiplier(self.cfg.schedule, progress, self.total))
        local_targets = sum(int((b.labels != -100).sum()) for b in micro_batches)
        local_rows = sum(b.input_ids.shape[0] for b in micro_batches)
        n_targets, n_rows = (max(int(n), 1) for n in sum_across_ranks([local_targets, local_rows], self.device))
        sums = [0.0, 0.0, 0.0]  # cross-entropy, z-loss, the model's auxiliary loss (a VLM's object loss)
        for i, batch in enumerate(micro_batches):
            with grad_sync(self.model, enabled=i == len(micro_batches) - 1):
                terms = self.forward_loss(batch, n_targets, n_rows)
                # Each rank's loss is its share of the global mean; DDP and FSDP average gradients over ranks,
                # so scaling by the world size makes their average the single-process gradient.
                (sum(terms) * self.world_size).backward()
            sums = [total + term.item() for total, term in zip(sums, terms, strict=True)]
        ce_sum, z_sum, aux_sum = sum_across_ranks(sums, self.device)
        if not math.isfinite(ce_sum + z_sum + aux_sum):
            raise NonFiniteLoss(f"loss is {ce_sum + z_sum + aux_sum} at step {self.state.step + 1}")
        grad_norm = clip_grad_norm(self.model.parameters(), self.cfg.optim.grad_clip or math.inf)
        skip = any([cb.before_optimizer_step(self, ce_sum + z_sum + aux_sum, grad_norm) for cb in self.callbacks])
        if not skip:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens += tokens_this_step
        metrics = {"step": self.state.step, "loss": ce_sum, "z_loss": z_sum, "grad_norm": grad_norm, "lr": lr,
                   "tokens": self.state.tokens}
        if any(getattr(b, "object_labels", None) is not None for b in micro_batches):
            metrics["object_loss"] = aux_sum
        return metrics

    def request_rollback(self, reason: str, before_step: int | None = None) -> None:
        """Ask for a rollback, to a checkpoint older than `before_step`, once this step's callbacks have run."""
        self._rollback = (reason, before_step)

    def handle_rollback(self, reason: str, before_step: int | None = None, error: Exception | None = None) -> None:
        """Roll back through the handler when one is set, then tell the callbacks; otherwise a NaN ends the run."""
        self._rollback = None
        self.optimizer.zero_grad(set_to_none=True)
        if self.rollback_handler is None:
            if error is not None:
                raise error
            return
        restored_step, discarded = self.rollback_handler(self, reason, before_step)
        for cb in self.callbacks:
            cb.on_rollback(self, restored_step, discarded)

    def forward_loss(self, batch, n_targets: int, n_rows: int) -> tuple[Tensor, Tensor, Tensor]:
        """(cross-entropy, z-loss, auxiliary loss) of one micro-batch, each its share of the step's mean. The
        auxiliary term is a VLM's object loss (kiln.vlm.model), a mean over rows, when the batch has its labels.
        With `loss_chunk`, the model hands its final states to the chunked loss instead of returning logits."""
        input_ids = batch.input_ids.to(self.device, non_blocking=True)
        labels = batch.labels.to(self.device, non_blocking=True)
        inputs = {}
        if self.cfg.data.intra_doc_masking:
            inputs["doc_ids"] = batch.doc_ids.to(self.device)
        if getattr(batch, "images", None) is not None:  # a VLM's batch (kiln.vlm.batches)
            inputs["images"] = batch.images.to(self.device, non_blocking=True)
        if getattr(batch, "object_labels", None) is not None:
            inputs["object_labels"] = batch.object_labels.to(self.device, non_blocking=True)
        if getattr(batch, "prompt_lens", None) is not None:  # where a VLM's answer starts (its prefix LM)
            inputs["prompt_lens"] = batch.prompt_lens.to(self.device)
        z_weight = self.cfg.trainer.z_loss
        if self.loss_chunk:
            inputs["head_fn"] = lambda hidden, weight: chunked_loss_terms(hidden, weight, labels, n_targets,
                                                                          z_weight, self.loss_chunk)
        with self.autocast():
            out = self.model(input_ids, **inputs)
        head, aux = out if "object_labels" in inputs else (out, None)
        ce, z = head[:2] if self.loss_chunk else loss_terms(head, labels, n_targets, z_weight)
        aux = ce.new_zeros(()) if aux is None else aux.float() * (input_ids.shape[0] / n_rows)
        return ce, z, aux

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.autocast_dtype)
        return contextlib.nullcontext()

    def set_lr(self, multiplier: float) -> float:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * multiplier * self.state.lr_scale
        return self.cfg.optim.lr * multiplier * self.state.lr_scale  # the peak LR's value (muP scales some groups)

    def throughput(self, step_time: float) -> dict[str, float]:
        tokens_per_s = self.cfg.tokens_per_step / step_time  # per device
        out = {"tokens_per_s": tokens_per_s * self.world_size}
        mfu = self.mfu(tokens_per_s)
        if mfu is not None:
            out["mfu"] = mfu
        return out

    def mfu(self, tokens_per_s: float) -> float | None:
        """Achieved over peak FLOP/s of one device, at most 1: a peak that training beats is wrong, not the MFU."""
        if not self.peak_flops:
            return None
        achieved = self.flops_per_token * tokens_per_s
        if achieved > self.peak_flops and not self._peak_rechecked:
            self._peak_rechecked = True
            self._recheck_peak(achieved)
        return min(achieved / self.peak_flops, 1.0)

    def _recheck_peak(self, achieved: float) -> None:
        """Once per run: re-measure a CPU peak (taken on a busy machine); a configured or data-sheet one only warns."""
        before = self.peak_flops
        if self.cfg.trainer.peak_flops or self.device.type != "cpu":
            configured = bool(self.cfg.trainer.peak_flops)
            what = "configured trainer.peak_flops" if configured else self.peak_source
            log.warning("MFU clamped to 100%%: training achieves %s per device, above the peak of %s (%s), which is "
                        "too low%s", format_flops(achieved), format_flops(before), what,
                        "; raise --trainer.peak_flops" if configured else "")
            return
        peak = remeasure_cpu_peak(self.cfg.trainer.precision, before)
        self.peak_flops, self.peak_source = peak.value, peak.source
        bound = "" if achieved <= peak.value else "; still below training, so it is a lower bound and MFU is clamped"
        log.warning("training achieves %s per device, above the CPU peak of %s: re-measured the peak: %s%s",
                    format_flops(achieved), format_flops(before), format_flops(peak.value), bound)
