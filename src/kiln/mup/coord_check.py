"""The coordinate check of Tensor Programs V (Yang et al., 2022, section 7 / figure 5; microsoft/mup's `coord_check`).

Train models that differ only in width for a few steps at one constant learning rate (no warmup, no clipping: the
check is of the parametrization, not of the training recipe) on the same batches, and record the mean |x| of every
block's attention output, MLP output and residual stream, and of the logits, at steps 0..S. Under muP each stays
the same size as the width grows; under standard parametrization some grow (Adam's update of a d-wide matrix
moves its output by about lr * d). The verdict fits log2(mean |x|) against log2(width) per activation and step.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kiln.distributed import pick_device
from kiln.errors import KilnError
from kiln.model.transformer import Transformer
from kiln.optim.adamw import build_adamw
from kiln.train.config import TrainConfig, load_config
from kiln.train.loss import loss_terms
from kiln.train.run import build_loaders, build_model_config, open_datasets

# |slope| allowed, in doublings of mean |x| per doubling of width: halfway between muP's 0 and the smallest growth
# standard parametrization predicts for Adam (+0.5 per doubling, a sum of d aligned terms over sqrt(d) at init).
DEFAULT_BAND = 0.25
# Expected slope ranges under muP. The logits are an initial part that vanishes as 1/sqrt(width) (output multiplier
# 1/m on a constant-std head; TP5, Table 3) plus the updates' part, of size 1: their slope lies between -0.5 (at
# step 0) and 0 (once the updates dominate). Every other activation is expected flat.
EXPECTED_RANGES = {"logits": (-0.5, 0.0)}
PARAMETRIZATIONS = ("standard", "mup")


@dataclass
class CoordResult:
    """mean |x| per (parametrization, activation, step) -> {width: [one value per seed]}, and the slopes."""

    widths: list[int]
    steps: int
    band: float
    values: dict[tuple[str, str, int], dict[int, list[float]]] = field(default_factory=lambda: defaultdict(dict))

    def activations(self) -> list[str]:
        return list(dict.fromkeys(act for _, act, _ in self.values))

    def parametrizations(self) -> list[str]:
        return list(dict.fromkeys(p for p, _, _ in self.values))

    def mean(self, parametrization: str, activation: str, step: int) -> list[float]:
        """Mean over seeds, one value per width."""
        by_width = self.values[(parametrization, activation, step)]
        return [float(np.mean(by_width[w])) for w in self.widths]

    def slope(self, parametrization: str, activation: str, step: int) -> float:
        """Least-squares slope of log2(mean |x|) against log2(width)."""
        means = np.log2(np.maximum(self.mean(parametrization, activation, step), 1e-30))
        return float(np.polyfit(np.log2(self.widths), means, 1)[0])

    def violations(self, parametrization: str) -> list[tuple[str, int, float]]:
        """(activation, step, slope) whose slope lies outside its expected value +- band."""
        out = []
        for activation in self.activations():
            for step in range(self.steps + 1):
                slope = self.slope(parametrization, activation, step)
                if not self.allowed(activation, slope):
                    out.append((activation, step, slope))
        return out

    def passes(self, parametrization: str) -> bool:
        return not self.violations(parametrization)

    def allowed(self, activation: str, slope: float) -> bool:
        low, high = EXPECTED_RANGES.get(activation, (0.0, 0.0))
        return low - self.band <= slope <= high + self.band


def width_config(recipe: str | Path | None, overrides: list[str], width: int, parametrization: str, base_width: int,
                 seed: int) -> TrainConfig:
    """The recipe at `width`, the MLP widened in proportion (its d_ff / d_model ratio kept)."""
    model = load_config(recipe, overrides).model.build(vocab_size=2)  # the vocabulary comes from the data later
    ratio = model.d_ff / model.d_model
    return load_config(recipe, overrides + [f"--model.d_model={width}", f"--model.d_ff={round(ratio * width)}",
                                            f"--model.parametrization={parametrization}",
                                            f"--model.mup_base_d_model={base_width}", f"--trainer.seed={seed}"])


class ActivationSizes:
    """Forward hooks recording mean |x| of each block's attention and MLP outputs and residual stream."""

    def __init__(self, model: Transformer) -> None:
        self.sizes: dict[str, float] = {}
        self.handles = []
        for i, block in enumerate(model.blocks):
            for name, module in ((f"block{i}.attn", block.attn), (f"block{i}.mlp", block.mlp),
                                 (f"block{i}.residual", block)):
                self.handles.append(module.register_forward_hook(self._record(name)))

    def _record(self, name: str) -> Callable:
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self.sizes[name] = output.detach().abs().float().mean().item()
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def record_run(cfg: TrainConfig, steps: int, lr: float | None) -> dict[str, list[float]]:
    """Train `steps` AdamW steps at a constant LR; mean |x| per activation at steps 0..steps."""
    device = pick_device(cfg.trainer.device)
    if device.type == "cpu" and cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    torch.manual_seed(cfg.trainer.seed)
    datasets = open_datasets(cfg)
    model = Transformer(build_model_config(cfg, datasets[0].vocab_size)).to(device)
    optimizer = build_adamw(model, cfg.optim)
    for group in optimizer.param_groups:  # keep muP's per-group ratios while changing the peak LR
        group["lr"] *= (lr or cfg.optim.lr) / cfg.optim.lr
    batches = iter(build_loaders(cfg, datasets, rank=0, world_size=1)[0])
    probe, sizes = ActivationSizes(model), defaultdict(list)
    try:
        for step in range(steps + 1):
            batch = next(batches)
            input_ids, labels = batch.input_ids.to(device), batch.labels.to(device)
            logits = model(input_ids)
            for name, value in probe.sizes.items():
                sizes[name].append(value)
            sizes["logits"].append(logits.detach().abs().float().mean().item())
            if step == steps:  # recorded; no update follows
                break
            n_targets = max(int((labels != -100).sum()), 1)
            ce, z = loss_terms(logits, labels, n_targets, cfg.trainer.z_loss)
            (ce + z).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    finally:
        probe.remove()
    return sizes


def coord_check(recipe: str | Path | None, widths: list[int], steps: int = 5, seeds: int = 3,
                parametrizations: tuple[str, ...] = PARAMETRIZATIONS, base_width: int | None = None,
                lr: float | None = None, band: float = DEFAULT_BAND, overrides: list[str] | None = None,
                report: Callable[[str], None] = print) -> CoordResult:
    """Run every (parametrization, width, seed) and collect the activation sizes; `report` gets a line per run."""
    check_arguments(widths, steps, seeds, parametrizations, band)
    overrides = [o for o in overrides or [] if o != "--"]
    base = base_width or load_config(recipe, overrides).model.overrides.get("mup_base_d_model") or min(widths)
    result = CoordResult(sorted(widths), steps, band)
    total, done = len(parametrizations) * len(widths) * seeds, 0
    for parametrization in parametrizations:
        for width in result.widths:
            for seed in range(seeds):
                start = time.perf_counter()
                cfg = width_config(recipe, overrides, width, parametrization, base, seed)
                for activation, sizes in record_run(cfg, steps, lr).items():
                    for step, value in enumerate(sizes):
                        result.values[(parametrization, activation, step)].setdefault(width, []).append(value)
                done += 1
                report(f"kiln mup coord-check: [{done}/{total}] {parametrization} width {width} seed {seed} "
                       f"({time.perf_counter() - start:.1f} s)")
    return result


def check_arguments(widths: list[int], steps: int, seeds: int, parametrizations: tuple[str, ...],
                    band: float) -> None:
    if len(set(widths)) < 2 or min(widths) <= 0:
        raise KilnError(f"--widths needs at least two different positive widths, got {widths}")
    if steps < 1 or seeds < 1:
        raise KilnError(f"--steps and --seeds must be 1 or more, got {steps} and {seeds}")
    unknown = [p for p in parametrizations if p not in PARAMETRIZATIONS]
    if unknown or not parametrizations:
        raise KilnError(f"--parametrizations must be from {', '.join(PARAMETRIZATIONS)}, got {list(parametrizations)}")
    if band <= 0:
        raise KilnError(f"--band must be positive, got {band}")


def plot_coord_check(result: CoordResult, path: Path) -> Path:
    """One row per parametrization, one panel per activation: mean |x| vs width (log-log), a line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols = result.parametrizations(), result.activations()
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols), 2.5 * len(rows)), squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, result.steps + 1))
    for r, parametrization in enumerate(rows):
        verdict = "passes" if result.passes(parametrization) else "fails"
        for c, activation in enumerate(cols):
            ax = axes[r][c]
            for step in range(result.steps + 1):
                ax.plot(result.widths, result.mean(parametrization, activation, step), marker="o", markersize=3,
                        color=colors[step], label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'muP' if parametrization == 'mup' else 'standard'}: {activation}", fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel(f"mean |x| ({verdict})", fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("width (d_model)", fontsize=8)
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(result: CoordResult) -> str:
    """Slopes per parametrization, activation and step, with the verdict."""
    head = "| parametrization | activation | " + " | ".join(f"step {s}" for s in range(result.steps + 1)) + " |"
    lines = [head, "|" + "---|" * (result.steps + 3)]
    for parametrization in result.parametrizations():
        for activation in result.activations():
            cells = []
            for step in range(result.steps + 1):
                slope = result.slope(parametrization, activation, step)
                cells.append(f"{slope:+.2f}" if result.allowed(activation, slope) else f"**{slope:+.2f}**")
            lines.append(f"| {parametrization} | {activation} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Slope of log2(mean |x|) against log2(width) over widths {result.widths}; allowed: 0 +- "
                 f"{result.band} (logits: -0.5 - {result.band} to {result.band}); bold = outside.")
    for parametrization in result.parametrizations():
        bad = result.violations(parametrization)
        verdict = "PASS" if not bad else f"FAIL ({len(bad)} of {len(result.activations()) * (result.steps + 1)} " \
                                         f"outside, largest {max(bad, key=lambda b: abs(b[2]))[2]:+.2f})"
        lines.append(f"- {parametrization}: {verdict}")
    return "\n".join(lines) + "\n"


def write_coord_check(result: CoordResult, out: Path) -> tuple[Path, str]:
    """OUT/coord_check.md, .json (every value) and .png."""
    out.mkdir(parents=True, exist_ok=True)
    text = markdown_table(result)
    (out / "coord_check.md").write_text(text)
    data = {"widths": result.widths, "steps": result.steps, "band": result.band,
            "verdicts": {p: result.passes(p) for p in result.parametrizations()},
            "slopes": {f"{p}/{a}/{s}": result.slope(p, a, s) for p, a, s in result.values},
            "values": {f"{p}/{a}/{s}": {str(w): v for w, v in by_width.items()}
                       for (p, a, s), by_width in result.values.items()}}
    (out / "coord_check.json").write_text(json.dumps(data, indent=1) + "\n")
    plot_coord_check(result, out / "coord_check.png")
    return out / "coord_check.md", text

