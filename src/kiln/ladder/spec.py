"""A ladder spec (recipes/ladder/*.yaml) and the plan it expands to: every rung's shape, LR, batch and runs.

Each size N (non-embedding parameters) gets its width and depth from a fixed aspect ratio, its peak LR and batch
from Porian et al. 2024 ("Resolving Discrepancies in Compute-Optimal Scaling of Language Models", the formulas
OLMo-core's model ladder uses): LR = 0.0047 (N / 108M)^(-1/3), batch = 160 (N / 108M)^(2/3) sequences of 2048
tokens, and a warmup of N tokens. Durations are multiples of Chinchilla's C = 20 N tokens.

One run per size yields every duration (WSD-S): the main run trains at the peak LR to its longest duration and
decays over the last `decay_fraction` of it; at 90% of each shorter duration it keeps a checkpoint, from which a
branch run (`checkpoint.init_from`) decays over the remaining 10%. A WSD run's LR before its decay does not
depend on its length, so each branch is exactly the run of that length trained alone (tests/train/test_fork.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.config import ConfigKeyError, from_dict, load_yaml, require
from kiln.model.config import ModelConfig, param_counts
from kiln.train.config import load_config


@dataclass
class ShapeRule:
    """Width and depth from N: d_model = aspect_ratio x n_layers (OLMo 2 7B and 13B: 128; small models need less)."""

    aspect_ratio: float = 32.0  # d_model per layer
    head_dim: int = 16  # d_model is a multiple of it
    mlp_ratio: float = 4.0  # d_ff / d_model (Kiln's OLMo 2 presets; SwiGLU hidden size)
    min_layers: int = 1  # depth floor: a one-layer model (no composition of heads) scales unlike deeper ones


@dataclass
class PowerLaw:
    """value = coefficient x (N / reference_params)^exponent."""

    coefficient: float
    exponent: float
    reference_params: float = 108e6

    def __call__(self, n: float) -> float:
        return self.coefficient * (n / self.reference_params) ** self.exponent


@dataclass
class HeldOut:
    """Sizes trained only to check the fit's prediction, never fitted."""

    sizes: list[int] = field(default_factory=list)
    multiples: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class LadderSpec:
    sizes: list[int]  # target non-embedding parameter counts, one rung each
    multiples: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0])  # durations, in units of C
    heldout: HeldOut = field(default_factory=HeldOut)
    tokens_per_param: float = 20.0  # C = tokens_per_param x N (Hoffmann et al. 2022)
    shape: ShapeRule = field(default_factory=ShapeRule)
    lr: PowerLaw = field(default_factory=lambda: PowerLaw(0.0047, -1 / 3))  # Porian et al. 2024
    batch_sequences: PowerLaw = field(default_factory=lambda: PowerLaw(160.0, 2 / 3))  # of batch_sequence_length
    batch_sequence_length: int = 2048  # the formula's sequences are this long; the batch keeps its tokens
    warmup_tokens_per_param: float = 1.0  # Porian et al. 2024: warm up over N tokens
    decay_fraction: float = 0.1  # each duration's final share spent decaying the LR to 0
    eval_tokens: int = 262_144  # validation tokens scored at the end of every run (the same ones for every rung)
    train: dict[str, Any] = field(default_factory=dict)  # the kiln train recipe every run shares

    def validate(self) -> None:
        require(bool(self.sizes) and all(n > 0 for n in self.sizes), "sizes", self.sizes, "positive counts")
        for key in ("multiples", "heldout.multiples"):
            values = self.multiples if key == "multiples" else self.heldout.multiples
            require(bool(values) and all(m > 0 for m in values), key, values, "positive multiples of C")
        require(0 < self.decay_fraction < 1, "decay_fraction", self.decay_fraction, "in (0, 1)")
        require(self.eval_tokens > 0, "eval_tokens", self.eval_tokens, "positive")
        require(self.shape.head_dim > 0 and self.shape.aspect_ratio > 0, "shape", self.shape, "positive values")


def load_spec(path: str | Path) -> LadderSpec:
    raw = load_yaml(path)
    if "sizes" not in raw:
        raise ConfigKeyError(f"ladder spec {path} has no `sizes` (the non-embedding parameter counts of its rungs)")
    spec = from_dict(LadderSpec, raw)
    spec.validate()
    return spec


@dataclass
class RunPlan:
    """One kiln run of a rung: the main run (its longest duration) or a decay branch forked from it."""

    name: str  # e.g. 2xC
    multiple: float
    steps: int
    fork_step: int | None  # the main run's step a branch starts from; None for the main run


@dataclass
class Rung:
    name: str  # e.g. n25k
    target: int
    model: dict[str, int]  # n_layers, d_model, n_heads, d_ff
    n: int  # non-embedding parameters of the built model
    lr: float
    sequences: int  # per optimizer step
    heldout: bool
    runs: list[RunPlan]

    @property
    def main(self) -> RunPlan:
        return next(run for run in self.runs if run.fork_step is None)


def format_count(n: float) -> str:
    """6250 -> 6.25k, 100000 -> 100k, 1.5e6 -> 1.5M, 1.43e9 -> 1.43B."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.3g}"


def model_shape(target: int, rule: ShapeRule, vocab_size: int, base: dict[str, Any]) -> tuple[dict[str, int], int]:
    """The (n_layers, d_model, n_heads, d_ff) nearest `target` non-embedding parameters, and their exact count.

    Depth comes first from the aspect ratio (N ~ k d^2 L with d = ratio x L), then width is refit at that depth.
    """
    per_d2 = _count(base, vocab_size, 1, 64, rule) / 64**2  # parameters per layer / d_model^2, near enough
    layers = max(rule.min_layers, 1, round((target / (per_d2 * rule.aspect_ratio**2)) ** (1 / 3)))
    best: tuple[dict[str, int], int] | None = None
    for mult in range(1, 4096):
        d = mult * rule.head_dim
        shape = _shape(layers, d, rule)
        n = _count(base, vocab_size, layers, d, rule)
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (shape, n)
        if n > target:
            break
    assert best is not None
    return best


def _shape(layers: int, d_model: int, rule: ShapeRule) -> dict[str, int]:
    return {"n_layers": layers, "d_model": d_model, "n_heads": d_model // rule.head_dim,
            "d_ff": int(round(rule.mlp_ratio * d_model))}


def _count(base: dict[str, Any], vocab_size: int, layers: int, d_model: int, rule: ShapeRule) -> int:
    cfg = ModelConfig(**{**base, "vocab_size": vocab_size, **_shape(layers, d_model, rule)})
    return param_counts(cfg)["non_embedding"]


def run_steps(tokens: float, step_tokens: int, decay_fraction: float) -> int:
    """Steps for about `tokens`, a multiple of 1/decay_fraction steps so the decay starts on a step boundary."""
    unit = max(1, round(1 / decay_fraction))
    return max(unit, unit * round(tokens / step_tokens / unit))


def plan_rung(spec: LadderSpec, target: int, multiples: list[float], heldout: bool, vocab_size: int,
              base_model: dict[str, Any], seq_len: int) -> Rung:
    """A size's shape, LR and batch from the spec's formulas, and its runs: a main run and one branch per shorter
    duration, forked where that duration's decay begins."""
    model, n = model_shape(target, spec.shape, vocab_size, base_model)
    batch_tokens = spec.batch_sequences(n) * spec.batch_sequence_length
    sequences = max(1, round(batch_tokens / seq_len))
    step_tokens = sequences * seq_len
    steps = {m: run_steps(m * spec.tokens_per_param * n, step_tokens, spec.decay_fraction) for m in multiples}
    longest = max(multiples)
    runs = [RunPlan(f"{m:g}xC", m, steps[m], None if m == longest else steps[m] - int(spec.decay_fraction * steps[m]))
            for m in sorted(multiples)]
    return Rung(f"n{format_count(target)}", target, model, n, spec.lr(n), sequences, heldout, runs)


def plan_ladder(spec: LadderSpec) -> list[Rung]:
    """Every rung, ladder sizes first, then the held-out ones; shapes use the data's vocabulary and model preset."""
    base = load_config(None, spec.train)
    vocab = _data_vocab(base)
    base_model = base.model.build(vocab).to_dict()
    rungs = [plan_rung(spec, n, spec.multiples, False, vocab, base_model, base.data.seq_len) for n in spec.sizes]
    rungs += [plan_rung(spec, n, spec.heldout.multiples, True, vocab, base_model, base.data.seq_len)
              for n in spec.heldout.sizes]
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise ConfigKeyError(f"two sizes share a rung name ({', '.join(names)}); make the sizes differ more")
    shapes: dict[tuple, str] = {}
    for rung in rungs:
        other = shapes.setdefault(tuple(rung.model.values()), rung.name)
        if other != rung.name:
            raise ConfigKeyError(f"sizes {other} and {rung.name} round to the same model ({rung.model}, N={rung.n:,}); "
                                 "spread the sizes further or lower shape.head_dim")
    return rungs


def _data_vocab(cfg) -> int:
    from kiln.train.run import open_datasets

    return cfg.model.overrides.get("vocab_size") or open_datasets(cfg)[0].vocab_size


def run_overrides(spec: LadderSpec, rung: Rung, run: RunPlan, run_dir: Path, main_dir: Path,
                  seq_len: int) -> dict[str, Any]:
    """What the ladder sets on top of the spec's `train` recipe for one run."""
    step_tokens = rung.sequences * seq_len
    keep = [] if run.fork_step is not None else sorted(r.fork_step for r in rung.runs if r.fork_step is not None)
    return {
        "model": dict(rung.model),
        "optim": {"lr": rung.lr},
        "schedule": {"name": "wsd", "units": "tokens", "warmup": int(spec.warmup_tokens_per_param * rung.n),
                     "decay_fraction": spec.decay_fraction, "min_lr_ratio": 0.0},
        "trainer": {"run_dir": str(run_dir), "steps": run.steps, "micro_batch_size": rung.sequences, "grad_accum": 1},
        "checkpoint": {"every": 0, "keep_steps": keep, "save_final": True,
                       "init_from": None if run.fork_step is None else str(main_dir / f"step{run.fork_step:06d}")},
        "eval": {"every": 0, "max_batches": max(1, math.ceil(spec.eval_tokens / step_tokens))},
    }
