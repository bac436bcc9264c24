"""The experiment config: model, data, optimizer, schedule, trainer, checkpointing, evaluation and logging.

The defaults train a tiny OLMo 2 model on the built-in corpus. The main job (`kiln train` with no recipe) is those
defaults plus the recipe `kiln/assets/main_job.yaml`, tuned by sweeps for the lowest held-out bits per byte in a few
minutes on a 2-core CPU (docs/performance.md, "Time to quality").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kiln.config import (
    ConfigKeyError,
    commented_section,
    documented_rows,
    field_docs,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    require,
    require_non_negative,
    require_positive,
    to_dict,
)
from kiln.model.config import VOCAB_MULTIPLE, ModelConfig
from kiln.model.presets import PRESETS, preset
from kiln.optim.adamw import OptimConfig
from kiln.optim.schedule import ScheduleConfig
from kiln.stability.config import StabilityConfig

log = logging.getLogger("kiln.train")

MAIN_JOB_RECIPE = Path(__file__).resolve().parents[1] / "assets" / "main_job.yaml"


@dataclass
class ModelSection:
    """A preset plus field overrides; `vocab_size` defaults to the data's tokenizer."""

    preset: str = "olmo2-tiny"  # named architecture (kiln.model.presets); any model field below overrides it
    overrides: dict[str, Any] = field(default_factory=dict)  # model fields set on top of the preset

    def build(self, vocab_size: int) -> ModelConfig:
        return preset(self.preset, **{"vocab_size": vocab_size, **self.overrides})


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # prepared dataset folders; empty = the built-in corpus
    weights: list[float] | None = None  # mixture weights, one per path; null = in proportion to their sizes
    seq_len: int = 256  # tokens per training instance; at most model.max_seq_len
    val_fraction: float = 0.05  # share held out for validation, in [0, 1); 0 = no validation
    repeat_filter: bool = True  # OLMo 2's repeated n-gram filter
    intra_doc_masking: bool = False  # attend only within each document of a packed instance

    def validate(self) -> None:
        require_positive(self, "data", "seq_len")
        require(0 <= self.val_fraction < 1, "data.val_fraction", self.val_fraction, "in [0, 1)")
        if self.weights is None:
            return
        if len(self.weights) != len(self.paths):
            raise ConfigKeyError(f"data.weights={self.weights!r} does not match data.paths ({len(self.paths)} paths): "
                                 "give one weight per path, or null for weights by size")
        require(all(w >= 0 for w in self.weights) and sum(self.weights) > 0, "data.weights", self.weights,
                "non-negative and not all 0")


@dataclass
class TrainerConfig:
    run_dir: str = "runs/main"  # checkpoints, logs and metrics; a folder holding checkpoints is resumed
    steps: int = 240  # optimizer steps in the whole run
    micro_batch_size: int = 16  # instances per forward/backward on each rank
    grad_accum: int = 1  # micro-batches accumulated per optimizer step
    seed: int = 0  # initial weights, data order and samples
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: Literal["fp32", "bf16", "auto"] = "fp32"  # bf16: autocast, fp32 weights; auto: bf16 where faster
    z_loss: float = 1e-5  # weight of the squared log-partition loss that keeps logits small (OLMo 2, Chameleon)
    loss_chunk: int | None = None  # rows per block of the chunked head + loss; 0 = whole logits; null = auto
    compile: bool = False  # torch.compile each transformer block (regional compilation)
    activation_checkpointing: bool = False  # recompute blocks' activations in backward, trading compute for memory
    ac_every: int = 1  # with activation_checkpointing: recompute every k-th block only (1 = all)
    ac_budget: float | None = None  # with compile: share of activation memory kept, the compiler recomputing the rest
    peak_flops: float | None = None  # per device, for MFU; measured on CPU when unset
    log_every: int = 10  # steps between progress lines when there is no live bar
    threads: int | None = None  # torch intra-op threads on CPU; default all cores

    def validate(self) -> None:
        require_positive(self, "trainer", "steps", "micro_batch_size", "grad_accum", "log_every", "peak_flops",
                         "threads")
        require_non_negative(self, "trainer", "z_loss", "loss_chunk")
        require_positive(self, "trainer", "ac_every")
        if self.ac_budget is not None:
            require(0 <= self.ac_budget <= 1, "trainer.ac_budget", self.ac_budget, "in [0, 1]")
            require(self.compile, "trainer.ac_budget", self.ac_budget,
                    "used with trainer.compile=true (the compiler chooses what to recompute)")
            require(not self.activation_checkpointing, "trainer.ac_budget", self.ac_budget,
                    "used without trainer.activation_checkpointing (the budget replaces it)")


@dataclass
class CheckpointConfig:
    every: int = 120  # steps between checkpoints; 0 = none before the end (see save_final)
    keep_last: int = 2  # checkpoints kept, oldest deleted first; 0 = keep all
    save_final: bool = True  # save a checkpoint at the last step
    async_save: bool = False  # write the model/optimizer state in the background while training continues
    verify_hashes: bool = False  # on resume, check SHA-256 of every file (sizes are always checked)
    allow_fresh: bool = False  # start over when checkpoints exist but none verifies (default: stop with an error)
    keep_steps: list[int] = field(default_factory=list)  # steps also saved and never pruned (a ladder's branch points)
    init_from: str | None = None  # a step folder to start from when run_dir has no checkpoint (a fork: weights,
    #                                optimizer, data position and step, as if resumed; a ladder's decay branch)
    init_data_position: bool = True  # with init_from, go on from its data position; false: start the data from
    #                                    its beginning (new data to continue on; weights, optimizer, step carry over)

    def validate(self) -> None:
        require_non_negative(self, "checkpoint", "every", "keep_last")
        require(all(isinstance(s, int) and s > 0 for s in self.keep_steps), "checkpoint.keep_steps", self.keep_steps,
                "positive step numbers")


@dataclass
class WatchdogConfig:
    enabled: bool = True  # watch each step's duration in a background thread
    slow_factor: float = 5.0  # warn, with every thread's stack, when a step takes this x the median step
    hard_timeout_s: float = 1800.0  # abort (exit code 75) when one step runs this long, for the supervisor

    def validate(self) -> None:
        require(self.slow_factor > 1, "watchdog.slow_factor", self.slow_factor, "greater than 1")
        require_positive(self, "watchdog", "hard_timeout_s")


@dataclass
class EvalConfig:
    every: int = 80  # steps between validation passes (and one at the end); 0 = only at the end
    max_batches: int = 10  # validation micro-batches per pass
    full_at_end: bool | None = None  # last pass reads the whole held-out split (val_full_*); null = when <= 4M tokens
    samples: int = 2  # generated continuations at the end of training; 0 = none
    sample_tokens: int = 48  # new tokens per generated continuation
    prompts: list[str] | None = None  # default: the built-in corpus's two, or the opening words of held-out documents
    downstream: list[str] | None = None  # tasks scored at each eval step, e.g. [hellaswag_rc_5shot] (kiln eval --list)
    downstream_limit: int = 100  # examples per downstream task (the first N of its validation set)
    downstream_batch_size: int = 16  # contexts per forward pass when scoring downstream tasks
    downstream_data: str | None = None  # folder with the tasks' JSONL or save_to_disk data (default: see kiln eval)

    def validate(self) -> None:
        require_positive(self, "eval", "max_batches", "downstream_limit", "downstream_batch_size")
        require_non_negative(self, "eval", "every", "samples", "sample_tokens")
        if self.downstream:
            from kiln.errors import KilnError
            from kiln.eval.tasks import get_task

            for name in self.downstream:
                try:
                    get_task(name)
                except KilnError as err:
                    raise ConfigKeyError(f"eval.downstream: {err}") from err


@dataclass
class LoggingConfig:
    tensorboard: bool = False  # also write TensorBoard event files in the run folder
    progress: Literal["auto", "bar", "lines"] = "auto"  # live bar, plain lines, or auto: a bar on a terminal


@dataclass
class DistributedConfig:
    """How ranks launched by torchrun split the work; a plain `python -m kiln train` is one process.

    auto = no wrapping on one process, FSDP2 on several. HSDP replicates across groups of `shard_size` ranks
    (default: the ranks of one node) and shards within each group.
    """

    strategy: Literal["auto", "none", "ddp", "fsdp", "hsdp"] = "auto"  # auto: none on one process, fsdp on several
    shard_size: int | None = None  # HSDP ranks per shard group; default LOCAL_WORLD_SIZE (one node)
    reshard_after_forward: bool = True  # FSDP: free gathered weights after forward (ZeRO-3), else keep (ZeRO-2)
    timeout_s: float = 600.0  # a collective waiting longer than this fails instead of hanging

    def validate(self) -> None:
        require_positive(self, "distributed", "shard_size", "timeout_s")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)  # the transformer: a preset plus field overrides
    data: DataConfig = field(default_factory=DataConfig)  # the token data and how it is cut into instances
    optim: OptimConfig = field(default_factory=OptimConfig)  # AdamW
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)  # the learning rate over the run
    trainer: TrainerConfig = field(default_factory=TrainerConfig)  # the loop: length, batch, device, precision
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # when and how to save
    eval: EvalConfig = field(default_factory=EvalConfig)  # validation loss and generated samples
    logging: LoggingConfig = field(default_factory=LoggingConfig)  # progress display and TensorBoard
    distributed: DistributedConfig = field(default_factory=DistributedConfig)  # multi-process wrapping
    stability: StabilityConfig = field(default_factory=StabilityConfig)  # spike detection, skipping, rollback
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)  # hung or slow steps

    @property
    def tokens_per_step(self) -> int:
        """Per data-parallel rank."""
        return self.trainer.micro_batch_size * self.trainer.grad_accum * self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def validate(self) -> None:
        """Refuse any value that cannot work before a run starts, naming the dotted key and what is valid."""
        for section in (self.data, self.optim, self.schedule, self.trainer, self.checkpoint, self.eval,
                        self.distributed, self.stability, self.watchdog):
            section.validate()
        max_seq_len = self.model.build(VOCAB_MULTIPLE).max_seq_len  # does not depend on the vocabulary
        require(self.data.seq_len <= max_seq_len, "data.seq_len", self.data.seq_len,
                f"at most model.max_seq_len={max_seq_len} (raise model.max_seq_len or lower data.seq_len)")

    def warnings(self, world_size: int = 1) -> list[str]:
        """Messages about values that run but are probably a mistake (warned about, not refused).

        A run that ends inside its warmup never reaches the peak LR, so runs compared by LR (a sweep) would differ
        only in their warmup slope; tiny smoke runs (and tests) do this on purpose.
        """
        schedule = self.schedule
        scale = 1 if schedule.units == "steps" else self.tokens_per_step * world_size
        total = self.trainer.steps * scale
        if schedule.warmup < total:
            return []
        return [f"warning: schedule.warmup={schedule.warmup} {schedule.units} is not below the run's {total} "
                f"{schedule.units} (trainer.steps={self.trainer.steps}): the learning rate warms up for the whole run "
                "and never decays; lower schedule.warmup or raise trainer.steps"]


def _normalise_model_section(raw: dict[str, Any]) -> None:
    """The model section takes `preset` plus any ModelConfig field, each checked like every other key."""
    model = raw.get("model")
    if model is None:
        return
    if not isinstance(model, dict):
        raise ConfigKeyError(f"model must be a mapping, got {model!r}")
    model = dict(model)
    name = model.pop("preset", ModelSection.preset)
    overrides = {**model.pop("overrides", {}), **model}
    preset(name)  # an unknown preset raises with the list of valid ones
    checked = from_dict(ModelConfig, {**PRESETS[name], **overrides}, prefix="model.")
    raw["model"] = {"preset": name, "overrides": {key: getattr(checked, key) for key in overrides}}


def _merge_layer(raw: dict[str, Any], layer: dict[str, Any], name: str) -> dict[str, Any]:
    """`layer` over `raw`; a layer that names another model preset takes that preset whole: the model fields set
    below it were chosen for the earlier preset (the main job's 2 layers would turn olmo2-150m into a 31M model)."""
    below, above = raw.get("model"), layer.get("model")
    if isinstance(below, dict) and isinstance(above, dict) and "preset" in above:
        fields = {**below.get("overrides", {}), **{k: v for k, v in below.items() if k not in ("preset", "overrides")}}
        if above["preset"] != below.get("preset", ModelSection.preset) and fields:
            log.info("model.preset=%s from %s: dropped the model fields set for %s (%s)", above["preset"], name,
                     below.get("preset", ModelSection.preset), ", ".join(f"{k}={v}" for k, v in fields.items()))
            raw = {**raw, "model": {}}
    return merge(raw, layer)


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None, *,
                cls: type[TrainConfig] = TrainConfig, base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- `base` <- recipe YAML <- dotted overrides, with every key and type checked. `cls` is TrainConfig
    or a subclass with more sections (a VLM's), `base` that job's own defaults."""
    raw = _merge_layer(base or {}, load_yaml(recipe) if recipe else {}, "the recipe")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    raw = _merge_layer(raw, extra, "the overrides")
    _normalise_model_section(raw)
    cfg = from_dict(cls, raw)
    cfg.validate()
    for warning in cfg.warnings(world_size=int(os.environ.get("WORLD_SIZE", "1"))):
        log.warning(warning)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved config as a recipe: every key of every section with its value, and its doc as a comment."""
    section_docs = field_docs(TrainConfig)
    lines = ["# The resolved config; save it as a recipe: kiln train --print-config [RECIPE] [overrides] > my.yaml"]
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        rows = _model_rows(value) if section.name == "model" else documented_rows(value)
        lines += commented_section(section.name, section_docs.get(section.name, ""), rows)
    return "\n".join(lines) + "\n"


def _model_rows(section: ModelSection) -> list[tuple[str | None, Any, str]]:
    """The preset and every ModelConfig field it resolves to; vocab_size, unless set, comes from the data."""
    docs = field_docs(ModelConfig)
    rows = [("preset", section.preset, field_docs(ModelSection)["preset"])]
    for key, value, doc in documented_rows(section.build(VOCAB_MULTIPLE)):
        if key == "vocab_size" and key not in section.overrides:
            rows.append((None, "vocab_size: unset = the data tokenizer's vocabulary", docs[key]))
        else:
            rows.append((key, value, doc))
    return rows
