"""The experiment config: model, data, optimizer, schedule, trainer, checkpointing, evaluation and logging.

The defaults are the main job: a tiny OLMo 2 model on the built-in corpus, about ten minutes on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kiln.config import ConfigKeyError, from_dict, load_yaml, merge, parse_overrides, to_dict
from kiln.model.config import ModelConfig
from kiln.model.presets import PRESETS, preset
from kiln.optim.adamw import OptimConfig
from kiln.optim.schedule import ScheduleConfig
from kiln.stability.config import StabilityConfig


@dataclass
class ModelSection:
    """A preset plus field overrides; `vocab_size` defaults to the data's tokenizer."""

    preset: str = "olmo2-tiny"
    overrides: dict[str, Any] = field(default_factory=dict)

    def build(self, vocab_size: int) -> ModelConfig:
        return preset(self.preset, **{"vocab_size": vocab_size, **self.overrides})


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # prepared dataset folders; empty = the built-in corpus
    weights: list[float] | None = None  # mixture weights, one per path
    seq_len: int = 256
    val_fraction: float = 0.05
    repeat_filter: bool = True  # OLMo 2's repeated n-gram filter
    intra_doc_masking: bool = False


@dataclass
class TrainerConfig:
    run_dir: str = "runs/main"
    steps: int = 240
    micro_batch_size: int = 16
    grad_accum: int = 1
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    precision: Literal["fp32", "bf16"] = "fp32"
    z_loss: float = 1e-5  # OLMo 2, Chameleon
    compile: bool = False
    activation_checkpointing: bool = False
    peak_flops: float | None = None  # per device, for MFU; measured on CPU when unset
    log_every: int = 10
    threads: int | None = None  # torch intra-op threads on CPU; default all cores


@dataclass
class CheckpointConfig:
    every: int = 120
    keep_last: int = 2
    save_final: bool = True
    async_save: bool = False  # write the model/optimizer state in the background while training continues
    verify_hashes: bool = False  # on resume, check SHA-256 of every file (sizes are always checked)
    allow_fresh: bool = False  # start over when checkpoints exist but none verifies (default: stop with an error)


@dataclass
class WatchdogConfig:
    enabled: bool = True
    slow_factor: float = 5.0  # warn, with every thread's stack, when a step takes this x the median step
    hard_timeout_s: float = 1800.0  # abort (exit code 75) when one step runs this long, for the supervisor


@dataclass
class EvalConfig:
    every: int = 80
    max_batches: int = 10
    samples: int = 2
    sample_tokens: int = 48
    prompts: list[str] | None = None  # default: the built-in corpus's two, or the opening words of held-out documents


@dataclass
class LoggingConfig:
    tensorboard: bool = False
    progress: Literal["auto", "bar", "lines"] = "auto"


@dataclass
class DistributedConfig:
    """How ranks launched by torchrun split the work; a plain `python -m kiln train` is one process.

    auto = no wrapping on one process, FSDP2 on several. HSDP replicates across groups of `shard_size` ranks
    (default: the ranks of one node) and shards within each group.
    """

    strategy: Literal["auto", "none", "ddp", "fsdp", "hsdp"] = "auto"
    shard_size: int | None = None  # HSDP ranks per shard group; default LOCAL_WORLD_SIZE (one node)
    reshard_after_forward: bool = True  # FSDP: free gathered weights after forward (ZeRO-3), else keep (ZeRO-2)
    timeout_s: float = 600.0  # a collective waiting longer than this fails instead of hanging


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)

    @property
    def tokens_per_step(self) -> int:
        """Per data-parallel rank."""
        return self.trainer.micro_batch_size * self.trainer.grad_accum * self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


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


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- recipe YAML <- dotted overrides, with every key and type checked."""
    raw = load_yaml(recipe) if recipe else {}
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    raw = merge(raw, extra)
    _normalise_model_section(raw)
    return from_dict(TrainConfig, raw)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
