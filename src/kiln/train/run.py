"""The entry point of a training run: build -> maybe load checkpoint -> fit."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from kiln import distributed
from kiln.data.baseline import unigram_cross_entropy
from kiln.data.dataset import TokenDataset
from kiln.data.loader import InstanceLoader, RepeatFilterConfig
from kiln.data.prompts import opening_prompts
from kiln.data.splits import held_out_tail
from kiln.data.tokenizer import check_same_tokenizer, token_byte_lengths, tokenizer_hash
from kiln.errors import KilnError
from kiln.faults.manifest import newest_valid_checkpoint
from kiln.model.config import ModelConfig, flops_per_token
from kiln.model.transformer import Transformer
from kiln.optim.adamw import build_adamw
from kiln.stability.monitor import StabilityMonitor
from kiln.stability.rollback import Rollbacks, carry_rollback_state, finish_interrupted_rollback
from kiln.train import callbacks as cbs
from kiln.train.checkpointing import check_same_shape, list_step_dirs, load_checkpoint
from kiln.train.config import TrainConfig, TrainerConfig
from kiln.train.config_changes import record_config
from kiln.train.flops import auto_precision, peak_flops
from kiln.train.loss import loss_chunk_rows
from kiln.train.trainer import NonFiniteLoss, Trainer
from kiln.train.wrapping import apply_activation_checkpointing, compile_blocks, set_activation_memory_budget

log = logging.getLogger("kiln.train")


def settle_precision(tc: TrainerConfig, device: torch.device) -> None:
    """Replace `trainer.precision=auto` by what this device computes faster (kiln.train.flops.auto_precision),
    before anything reads it; every rank takes rank 0's choice, so a sharded model computes in one dtype."""
    if tc.precision != "auto":
        return
    choice, why = auto_precision(device)
    choice, why = distributed.gather_objects((choice, why))[0] if distributed.world_size() > 1 else (choice, why)
    log.info("trainer.precision=auto: %s, as %s", choice, why)
    tc.precision = choice


def open_datasets(cfg: TrainConfig) -> list[TokenDataset]:
    """The configured prepared datasets (all sharing one tokenizer), or the built-in corpus."""
    if not cfg.data.paths:
        from kiln.data.prepare import builtin_dataset

        return [TokenDataset.open(builtin_dataset())]
    datasets = [TokenDataset.open(Path(p)) for p in cfg.data.paths]
    first = datasets[0]
    for other in datasets[1:]:
        check_same_tokenizer(tokenizer_hash(first.tokenizer), other.tokenizer, f"dataset {other.path}")
    return datasets


def build_model_config(cfg: TrainConfig, data_vocab: int) -> ModelConfig:
    """The model's vocabulary must cover every id of the data's tokenizer."""
    model_cfg = cfg.model.build(vocab_size=cfg.model.overrides.get("vocab_size", data_vocab))
    if model_cfg.vocab_size < data_vocab:
        raise KilnError(f"model.vocab_size={model_cfg.vocab_size} is smaller than the data tokenizer's vocabulary "
                        f"({data_vocab}); remove the override or set it to at least {data_vocab}")
    return model_cfg


BUILTIN_PROMPTS = ["ROMEO:", "To be, or not to be"]


def build_loaders(cfg: TrainConfig, datasets: list[TokenDataset], rank: int,
                  world_size: int) -> tuple[InstanceLoader, InstanceLoader | None]:
    """Train and validation loaders for this rank; no validation loader when data.val_fraction is 0.

    The repeated n-gram filter applies to training only, so the validation set is the same tokens and targets
    whatever the training filter does. A one-document dataset holds out the tail of its tokens (`data.splits`).
    """
    args = dict(seq_len=cfg.data.seq_len, batch_size=cfg.trainer.micro_batch_size, seed=cfg.trainer.seed, rank=rank,
                world_size=world_size, val_fraction=cfg.data.val_fraction, weights=cfg.data.weights)
    train = InstanceLoader(datasets, split="train", repeat_filter=RepeatFilterConfig(enabled=cfg.data.repeat_filter),
                           **args)
    if cfg.data.val_fraction == 0:
        log.info("validation off (data.val_fraction=0): no validation loss, perplexity or bits per byte")
        return train, None
    for ds in datasets:
        tail = held_out_tail(ds, cfg.data.val_fraction, cfg.data.seq_len + 1)
        if tail:
            log.info("dataset %s is one document: its last %s tokens are held out for validation", ds.path,
                     f"{tail:,}")
    return train, InstanceLoader(datasets, split="val", repeat_filter=None, **args)


def sample_prompts(cfg: TrainConfig, train_loader: InstanceLoader, val_loader: InstanceLoader | None) -> list[str]:
    """The configured prompts; else the built-in corpus's own, or the opening words of held-out documents."""
    if cfg.eval.prompts is not None:
        return cfg.eval.prompts
    if not cfg.data.paths:
        return BUILTIN_PROMPTS
    views = (val_loader.views if val_loader else []) + train_loader.views  # held-out documents first
    return opening_prompts(views, train_loader.sources[0].tokenizer, train_loader.eos_id, cfg.eval.samples)


@dataclass
class Run:
    """Everything a run is made of, built but not started."""

    cfg: TrainConfig
    run_dir: Path
    model: Transformer
    trainer: Trainer
    train_loader: InstanceLoader
    checkpointer: cbs.Checkpointer
    resumed_from: Path | None
    notes: list[str] = field(default_factory=list)  # what changed since the last start, for the run header

    @property
    def complete(self) -> bool:
        return self.resumed_from is not None and self.trainer.state.step >= self.cfg.trainer.steps


def build_model(cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device) -> Transformer:
    """The model on `device` with the trainer's activation checkpointing and per-block compilation applied."""
    model = Transformer(model_cfg).to(device)
    wrap_blocks(model, cfg.trainer)
    return model


def wrap_blocks(model: nn.Module, tc: TrainerConfig) -> None:
    """Apply `trainer.activation_checkpointing` (every `ac_every`-th block) and `trainer.compile` (each block, under
    `ac_budget`) to a decoder's blocks."""
    if tc.activation_checkpointing:
        apply_activation_checkpointing(model, tc.ac_every)
    if tc.compile:
        set_activation_memory_budget(1.0 if tc.ac_budget is None else tc.ac_budget)
        compile_blocks(model)


def resolve_loss_chunk(cfg: TrainConfig, padded_vocab: int, device: torch.device) -> int:
    """`trainer.loss_chunk` for a micro-batch of this config's rows on this device (kiln.train.loss.loss_chunk_rows)."""
    gpu_memory = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    return loss_chunk_rows(cfg.trainer.loss_chunk, padded_vocab, cfg.trainer.micro_batch_size * cfg.data.seq_len,
                           gpu_memory)


FULL_SPLIT_AUTO_TOKENS = 4_000_000  # eval.full_at_end=null reads the whole held-out split up to this size


def full_split_at_end(setting: bool | None, val_loader: InstanceLoader) -> bool:
    """Whether the last validation pass reads every held-out instance; auto: when the split is small enough to be
    read in a minute or two on a CPU."""
    if setting is not None:
        return setting
    return val_loader.instances_per_epoch * val_loader.seq_len <= FULL_SPLIT_AUTO_TOKENS


def build_callbacks(cfg: TrainConfig, run_dir: Path, tokenizer, model_cfg: ModelConfig, train_loader: InstanceLoader,
                    val_loader: InstanceLoader | None) -> tuple[list, cbs.Checkpointer]:
    """The callbacks in the order the trainer calls them; rank 0 alone writes metrics and draws progress."""
    watchdog = cbs.WatchdogCallback(cfg.watchdog)
    monitor = StabilityMonitor(cfg.stability, run_dir, tokenizer, train_loader.locate)
    checkpointer = cbs.Checkpointer(run_dir, cfg.checkpoint.every, cfg.checkpoint.keep_last,
                                    cfg.checkpoint.save_final, train_loader, tokenizer,
                                    yaml.safe_dump(cfg.to_dict(), sort_keys=False),
                                    stateful={"stability": monitor, "watchdog": watchdog},
                                    async_save=cfg.checkpoint.async_save, keep_steps=cfg.checkpoint.keep_steps)
    sampler = cbs.Sampler(run_dir, tokenizer, sample_prompts(cfg, train_loader, val_loader), cfg.eval.samples,
                          cfg.eval.sample_tokens, cfg.trainer.seed)
    callbacks = [watchdog, monitor, checkpointer, sampler]
    if val_loader is not None:
        unigram = unigram_cross_entropy(train_loader.views, val_loader.views, model_cfg.padded_vocab_size)
        callbacks.insert(1, cbs.Evaluator(val_loader, token_byte_lengths(tokenizer, model_cfg.padded_vocab_size),
                                          cfg.eval.every, cfg.eval.max_batches, unigram,
                                          full_at_end=full_split_at_end(cfg.eval.full_at_end, val_loader)))
    if cfg.eval.downstream:
        from kiln.eval.in_loop import DownstreamEvaluator

        callbacks.insert(1, DownstreamEvaluator(cfg.eval.downstream, cfg.eval.downstream_limit, cfg.eval.every,
                                                tokenizer, cfg.eval.downstream_batch_size, cfg.eval.downstream_data))
    if distributed.is_rank0():  # a step's metrics line is written before its checkpoint (kiln.train.metrics_log)
        at = callbacks.index(checkpointer)
        callbacks[at:at] = [cbs.MetricsWriter(run_dir, cfg.logging.tensorboard, durable_every=cfg.checkpoint.every),
                            cbs.Progress(cfg.logging.progress, cfg.trainer.log_every)]
    return callbacks, checkpointer


def build_run(cfg: TrainConfig, resume: bool | None = None) -> Run:
    """`resume=None` continues from the newest checkpoint when the run folder has one; True demands one.

    On several ranks (after `distributed.init_distributed`) each reads its own slice of every global batch.
    A run found complete (resumed at or past trainer.steps) writes nothing.
    """
    tc = cfg.trainer
    world_size = distributed.world_size()
    strategy = distributed.resolve_strategy(cfg.distributed.strategy, world_size)
    device = distributed.pick_device(tc.device)
    if device.type == "cpu" and tc.threads:
        torch.set_num_threads(tc.threads)
    settle_precision(tc, device)
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    run_dir = Path(tc.run_dir)
    datasets = open_datasets(cfg)
    tokenizer = datasets[0].tokenizer
    model_cfg = build_model_config(cfg, datasets[0].vocab_size)
    model = build_model(cfg, model_cfg, device)
    wrapped = distributed.parallelize(model, strategy, device, tc.precision, cfg.distributed)
    optimizer = build_adamw(model, cfg.optim)
    train_loader, val_loader = build_loaders(cfg, datasets, distributed.rank(), world_size)
    callbacks, checkpointer = build_callbacks(cfg, run_dir, tokenizer, model_cfg, train_loader, val_loader)
    peak = peak_flops(device, tc.precision, tc.peak_flops)
    trainer = Trainer(cfg, wrapped, optimizer, iter(train_loader), device, callbacks,
                      flops_per_token(model_cfg, cfg.data.seq_len), peak.value, world_size)
    trainer.peak_source = peak.source
    trainer.loss_chunk = resolve_loss_chunk(cfg, model_cfg.padded_vocab_size, device)
    if strategy in ("fsdp", "hsdp"):
        trainer.autocast_dtype = None  # FSDP's mixed-precision policy already computes in bf16
    if cfg.stability.rollback:
        trainer.rollback_handler = Rollbacks(run_dir, cfg.stability.rollback_lr_factor, cfg.stability.max_rollbacks)
    resumed_from = maybe_resume(cfg, resume, model_cfg, tokenizer, trainer, train_loader, model,
                                checkpointer.stateful)
    run = Run(cfg, run_dir, model, trainer, train_loader, checkpointer, resumed_from)
    if not run.complete and distributed.is_rank0():
        run_dir.mkdir(parents=True, exist_ok=True)
        run.notes = record_config(run_dir, cfg, trainer.state.step if resumed_from else None, world_size)
    return run


def maybe_resume(cfg: TrainConfig, resume: bool | None, model_cfg: ModelConfig, tokenizer, trainer: Trainer,
                 loader: InstanceLoader, model: Transformer, stateful: dict) -> Path | None:
    """Every rank loads the newest checkpoint that verifies, whatever number of ranks wrote it (DCP reshards).

    A newer checkpoint that is partial or corrupt is skipped with a warning naming it and why; when checkpoints
    exist but none verifies, the run stops rather than silently starting over (unless checkpoint.allow_fresh).
    """
    run_dir = Path(cfg.trainer.run_dir)
    finish_interrupted_rollback(run_dir)  # a kill during a rollback may have left its discarded checkpoints
    path = newest_valid_checkpoint(run_dir, list_step_dirs, hashes=cfg.checkpoint.verify_hashes,
                                   allow_fresh=cfg.checkpoint.allow_fresh)
    forked = path is None and bool(cfg.checkpoint.init_from)
    if forked:
        path = fork_source(Path(cfg.checkpoint.init_from), cfg.checkpoint.verify_hashes)
    if path is None:
        if resume:
            raise KilnError(f"--resume was given but {run_dir} holds no complete checkpoint")
        return None
    check_same_shape(path, model_cfg, model)
    from kiln.checkpoint import load_checkpoint_tokenizer

    saved_tok = load_checkpoint_tokenizer(path)
    if saved_tok is not None:
        check_same_tokenizer(tokenizer_hash(saved_tok), tokenizer, f"the data of resumed run {run_dir}")
    state = load_checkpoint(path, model, trainer.optimizer)
    trainer.state.step, trainer.state.tokens = state["step"], state["tokens"]
    trainer.state.lr_scale, trainer.state.rollbacks = state.get("lr_scale", 1.0), state.get("rollbacks", 0)
    carry_rollback_state(run_dir, trainer.state)  # a rollback after this checkpoint still counts
    if forked and not cfg.checkpoint.init_data_position:
        log.info("data from its beginning (checkpoint.init_data_position=false)")
    else:
        load_data_position(loader, state["loader"], cfg.checkpoint.init_from if forked else None)
    for name, callback in stateful.items():
        if name in state.get("callbacks", {}):
            callback.load_state_dict(state["callbacks"][name])
    trainer.batches = iter(loader)
    log.info("resumed from %s at step %d", path, state["step"])
    return path


def load_data_position(loader, state: dict, fork: str | None) -> None:
    """The loader goes on where the checkpoint's stopped; a fork onto other data is told how to start it afresh."""
    try:
        loader.load_state_dict(state)
    except (KilnError, ValueError) as err:
        if fork is None:
            raise
        raise KilnError(f"checkpoint.init_from={fork!r}: {err}. To continue it on other data, set "
                        "checkpoint.init_data_position=false") from err


def fork_source(path: Path, hashes: bool) -> Path:
    """The checkpoint a new run folder starts from (`checkpoint.init_from`), verified like a resume's."""
    from kiln.faults.manifest import CheckpointInvalid, verify_checkpoint

    try:
        verify_checkpoint(path, hashes=hashes)
    except CheckpointInvalid as err:
        raise KilnError(f"checkpoint.init_from={str(path)!r} is not a complete checkpoint: {err}") from err
    log.info("run folder has no checkpoint: starting from %s (checkpoint.init_from)", path)
    return path


def train(cfg: TrainConfig, resume: bool | None = None) -> Run:
    """Build the run and fit it; a NaN loss stops it naming the last good checkpoint.

    Under torchrun this joins the process group first; an error on any rank then ends every rank (see
    `distributed.exit_together`) rather than leaving the others waiting in a collective.
    """
    device_type = distributed.pick_device(cfg.trainer.device).type
    owns_group = distributed.init_distributed(device_type, cfg.distributed.timeout_s,
                                              force=cfg.distributed.strategy not in ("auto", "none"))
    with distributed.exit_together():
        if not distributed.is_rank0():
            logging.getLogger("kiln").setLevel(logging.WARNING)
        run = build_run(cfg, resume)
        if run.complete:
            if distributed.is_rank0():
                print(f"kiln train: run complete at step {run.trainer.state.step} ({run.resumed_from}); nothing to "
                      f"do. Raise --trainer.steps (now {cfg.trainer.steps}) to train further.", flush=True)
            return _finish(run, owns_group)
        if distributed.is_rank0():
            print_header(run)
        fit_run(run)
    return _finish(run, owns_group)


def fit_run(run: Run) -> None:
    """Train to the end; a NaN loss stops the run naming its last good checkpoint; the watchdog always stops."""
    try:
        run.trainer.fit()
    except NonFiniteLoss as err:
        raise NonFiniteLoss(cbs.describe_nan(err, run.checkpointer)) from None
    finally:
        for callback in run.trainer.callbacks:
            if isinstance(callback, cbs.WatchdogCallback):
                callback.watchdog.stop()


def _finish(run: Run, owns_group: bool) -> Run:
    if owns_group:
        distributed.shutdown_distributed()
    return run


def start_point(run: Run) -> str:
    """Where the run starts: from scratch, resuming its own checkpoint, or from another run's (a fork)."""
    if run.resumed_from is None:
        return "from scratch"
    if run.cfg.checkpoint.init_from and run.resumed_from == Path(run.cfg.checkpoint.init_from):
        return f"starting from {run.resumed_from} by checkpoint.init_from"
    return f"resuming {run.resumed_from}"


def print_header(run: Run) -> None:
    """What is about to run, where, and what changed since the run's last start."""
    cfg, ranks, where = run.cfg, distributed.world_size(), start_point(run)
    n_params = sum(p.numel() for p in run.model.parameters())
    print(f"kiln train: {run.model.cfg.n_layers}-layer model, {n_params:,} parameters, {cfg.trainer.steps} "
          f"steps of {cfg.tokens_per_step * ranks:,} tokens on {ranks} rank(s), run folder {run.run_dir} "
          f"({where}); MFU against {run.trainer.peak_source}", flush=True)
    if run.model.cfg.parametrization == "mup":
        print(mup_summary(run.model.cfg, cfg.optim.lr), flush=True)
    for line in run.notes:
        print(line, flush=True)


def mup_summary(model_cfg: ModelConfig, lr: float) -> str:
    """What muP does at this width, in one line: a user checks the multipliers here, not in the code."""
    m = model_cfg.width_mult
    return (f"muP: width {model_cfg.d_model} = {m:g} x base {model_cfg.mup_base_d_model}; hidden matrices: init std / "
            f"{m ** 0.5:.3g}, LR {lr / m:.3g} (peak {lr:.3g} / {m:g}); logits x {model_cfg.output_mult:.3g}; "
            f"attention scale {model_cfg.attention_scale:.3g}")
