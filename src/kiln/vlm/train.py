"""`kiln vlm train`: the VLM trained by Kiln's own trainer, checkpoints, resume, metrics and progress.

Only what differs from a text run is here: the config's `vision` and `vlm` sections, the model, the image batches
and an evaluator that answers validation questions and scores them as Molmo does. One process (no torchrun).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from kiln.config import ConfigKeyError, require, require_non_negative, require_positive
from kiln.data.tokenizer import vocab_size
from kiln.distributed import launched_ranks, pick_device
from kiln.errors import KilnError
from kiln.model.config import flops_per_token
from kiln.optim.adamw import build_adamw
from kiln.train import callbacks as cbs
from kiln.train.config import TrainConfig, load_config
from kiln.train.config_changes import record_config
from kiln.train.run import (
    Run,
    build_model_config,
    fit_run,
    maybe_resume,
    resolve_loss_chunk,
    settle_precision,
    start_point,
    wrap_blocks,
)
from kiln.train.trainer import Callback, Trainer
from kiln.vlm.batches import TOKENIZER_FILE, VLMLoader, load_dataset_tokenizer
from kiln.vlm.evaluate import answer_records, score
from kiln.vlm.model import VLM, VisionConfig, VLMConfig
from kiln.vlm.synth import load_split, require_image_size

log = logging.getLogger("kiln.train")


@dataclass
class VLMSection:
    eval_questions: int = 200  # validation questions answered (greedy) and scored at each evaluation; 0 = none
    max_answer_tokens: int = 200  # longest answer generated; ten points take about 170 tokens
    prefix_lm: bool = False  # image and question tokens attend both ways (PaliGemma); false: causal, as Molmo
    eval_batch_size: int = 64  # questions answered at once

    def validate(self) -> None:
        require_non_negative(self, "vlm", "eval_questions")
        require_positive(self, "vlm", "max_answer_tokens", "eval_batch_size")


@dataclass
class VLMTrainConfig(TrainConfig):
    vision: VisionConfig = field(default_factory=VisionConfig)  # the image encoder and connector's pooling
    vlm: VLMSection = field(default_factory=VLMSection)  # the decoder's attention; answering and scoring in training

    def validate(self) -> None:
        super().validate()
        self.vlm.validate()
        require(len(self.data.paths) == 1, "data.paths", self.data.paths, "one folder written by `kiln vlm data`")
        require(not self.data.intra_doc_masking, "data.intra_doc_masking", True, "false: a row is one question")
        require(self.schedule.units == "steps", "schedule.units", self.schedule.units,
                "steps: a VLM row's length varies with its answer, so tokens do not measure progress")
        require(not self.eval.full_at_end, "eval.full_at_end", self.eval.full_at_end,
                "unset for a VLM run (`kiln vlm eval CKPT DATA` scores a whole split)")


# The VLM job's defaults (on top of TrainConfig's): a 2-layer decoder, a 4-layer ViT, data/vlm.
DEFAULTS: dict[str, Any] = {
    "model": {"preset": "olmo2-tiny", "n_layers": 2, "d_model": 128, "n_heads": 4, "d_ff": 512,
              "max_seq_len": 512, "init": "scaled_embed"},  # embeddings at std 1: see init_vision_weights
    "data": {"paths": ["data/vlm"], "seq_len": 96, "repeat_filter": False},  # seq_len: a row's typical length
    "trainer": {"run_dir": "runs/vlm", "steps": 3000, "micro_batch_size": 32},
    "optim": {"lr": 2e-3},
    "schedule": {"warmup": 100},
    "eval": {"every": 500, "samples": 0},
    "checkpoint": {"every": 500},
}


def load_vlm_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> VLMTrainConfig:
    try:
        return load_config(recipe, overrides, cls=VLMTrainConfig, base=DEFAULTS)
    except ValueError as err:  # VisionConfig's own checks
        raise ConfigKeyError(f"vision: {err}") from err


class VLMEvaluator(Callback):
    """Every `eval.every` steps and at the end: validation loss on the answers, then Molmo's pointing and counting
    scores of greedy answers to the first `vlm.eval_questions` validation questions."""

    def __init__(self, cfg: VLMTrainConfig, data_dir: Path, val_loader: VLMLoader) -> None:
        self.cfg, self.data_dir, self.val_loader = cfg, data_dir, val_loader
        self.records = val_loader.records[:cfg.vlm.eval_questions]

    def on_step_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        step, every = trainer.state.step, self.cfg.eval.every
        if (every and step % every == 0) or step == self.cfg.trainer.steps:
            metrics.update(self.evaluate(trainer))

    @torch.no_grad()
    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        model = trainer.model
        model.eval()
        nats = targets = 0.0
        for i, batch in enumerate(self.val_loader):
            if i == self.cfg.eval.max_batches:
                break
            with trainer.autocast():  # as training runs, and as kiln train's Evaluator scores
                logits = model(batch.input_ids.to(trainer.device), images=batch.images.to(trainer.device),
                               prompt_lens=batch.prompt_lens)
            nats += F.cross_entropy(logits.float().flatten(0, 1), batch.labels.to(trainer.device).flatten(),
                                    ignore_index=-100, reduction="sum").item()
            targets += int((batch.labels != -100).sum())
        out = {"val_loss": nats / max(targets, 1)}
        if self.records:
            answers = answer_records(model, self.val_loader.tok, self.data_dir, self.records,
                                     self.cfg.vlm.eval_batch_size, self.cfg.vlm.max_answer_tokens)
            out.update({f"val_{k}": v for k, v in score(self.records, answers).items() if isinstance(v, float)})
        model.train()
        return out


def open_vlm_data(cfg: VLMTrainConfig) -> Path:
    data_dir = Path(cfg.data.paths[0])
    if not (data_dir / "train.jsonl").is_file() or not (data_dir / TOKENIZER_FILE).is_file():
        raise KilnError(f"data.paths={cfg.data.paths}: {data_dir} is not a VLM dataset folder; make one with "
                        f"`kiln vlm data --out {data_dir} --n 20000`")
    require_image_size(data_dir, cfg.vision.image_size)
    return data_dir


def build_vlm_run(cfg: VLMTrainConfig, resume: bool | None = None) -> Run:
    """The model, loaders, callbacks and trainer of a VLM run, resumed from its newest checkpoint when it has one."""
    if launched_ranks() > 1:  # each rank would train its own copy and all would write one run folder
        raise KilnError(f"kiln vlm train runs in one process, but torchrun started {launched_ranks()} "
                        "(WORLD_SIZE); run it without torchrun")
    tc = cfg.trainer
    device = pick_device(tc.device)
    if device.type == "cpu" and tc.threads:
        torch.set_num_threads(tc.threads)
    settle_precision(tc, device)
    torch.manual_seed(tc.seed)
    run_dir, data_dir = Path(tc.run_dir), open_vlm_data(cfg)
    tok = load_dataset_tokenizer(data_dir)
    model_cfg = VLMConfig(cfg.vision, build_model_config(cfg, vocab_size(tok)), cfg.vlm.prefix_lm)
    if model_cfg.text.parametrization != "standard":
        raise KilnError(f"model.parametrization={model_cfg.text.parametrization}: a VLM run trains under standard "
                        "parametrization only (muP's optimizer groups do not reach its decoder)")
    model = VLM(model_cfg).to(device)
    wrap_blocks(model.text, tc)  # checkpointing and compilation reach the decoder; the ViT is small
    optimizer = build_adamw(model, cfg.optim)
    object_grid = cfg.vision.grid if cfg.vision.object_loss else 0
    train_loader = VLMLoader(data_dir, load_split(data_dir, "train"), tok, tc.micro_batch_size, tc.seed,
                             object_grid=object_grid)
    val_loader = VLMLoader(data_dir, load_split(data_dir, "val"), tok, tc.micro_batch_size, train=False)
    watchdog = cbs.WatchdogCallback(cfg.watchdog)
    checkpointer = cbs.Checkpointer(run_dir, cfg.checkpoint.every, cfg.checkpoint.keep_last,
                                    cfg.checkpoint.save_final, train_loader, tok,
                                    yaml.safe_dump(cfg.to_dict(), sort_keys=False), stateful={"watchdog": watchdog},
                                    async_save=cfg.checkpoint.async_save, keep_steps=cfg.checkpoint.keep_steps)
    callbacks = [watchdog, VLMEvaluator(cfg, data_dir, val_loader),
                 cbs.MetricsWriter(run_dir, cfg.logging.tensorboard, durable_every=cfg.checkpoint.every),
                 cbs.Progress(cfg.logging.progress, tc.log_every), checkpointer]
    trainer = Trainer(cfg, model, optimizer, iter(train_loader), device, callbacks,
                      flops_per_token(model_cfg.text, cfg.data.seq_len), None)
    trainer.loss_chunk = resolve_loss_chunk(cfg, model_cfg.text.padded_vocab_size, device)
    resumed_from = maybe_resume(cfg, resume, model_cfg, tok, trainer, train_loader, model, checkpointer.stateful)
    run = Run(cfg, run_dir, model, trainer, train_loader, checkpointer, resumed_from)
    if not run.complete:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.notes = record_config(run_dir, cfg, trainer.state.step if resumed_from else None)
    return run


def train_vlm(cfg: VLMTrainConfig, resume: bool | None = None) -> Run:
    """Build and fit; a finished run writes nothing."""
    run = build_vlm_run(cfg, resume)
    if run.complete:
        print(f"kiln vlm train: run complete at step {run.trainer.state.step} ({run.resumed_from}); nothing to do. "
              f"Raise --trainer.steps (now {cfg.trainer.steps}) to train further.", flush=True)
        return run
    print(header(run), flush=True)
    fit_run(run)
    return run


def header(run: Run) -> str:
    cfg, model = run.cfg, run.model
    vision, text = model.cfg.vision, model.cfg.text
    n_params = sum(p.numel() for p in model.parameters())
    where = start_point(run)
    return (f"kiln vlm train: {n_params:,} parameters ({vision.stem} stem, ViT {vision.n_layers} x {vision.d_model}, "
            f"{vision.image_tokens} image tokens; decoder {text.n_layers} x {text.d_model}), {cfg.trainer.steps} "
            f"steps of {cfg.trainer.micro_batch_size} questions, data {cfg.data.paths[0]}, run folder {run.run_dir} "
            f"({where})" + "".join(f"\n{note}" for note in run.notes))
