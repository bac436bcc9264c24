"""AdamW whose weight decay skips embeddings and decays everything else, as OLMo 2 does.

OLMo 2's released configs (e.g. `configs/official-1124/OLMo2-7B-stage1.yaml`) set `decay_embeddings: false` and
`decay_norm_and_bias: true`: only the embeddings are excluded. Norm weights (QK-norm's included) and biases can be
excluded too, as switches.

Under muP (`model.parametrization: mup`) the hidden matrices form a third group with LR / m and weight decay * m
(kiln.model.mup); a standard model keeps exactly the two groups, so its checkpoints load as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kiln.config import require, require_non_negative, require_positive
from kiln.model.mup import hidden_matrix_names


@dataclass
class OptimConfig:
    lr: float = 3e-3  # peak learning rate; the schedule scales it
    betas: tuple[float, float] = (0.9, 0.95)  # Adam's moment decay rates, each in [0, 1) (OLMo 2)
    eps: float = 1e-8  # added to Adam's denominator (OLMo 2)
    weight_decay: float = 0.1  # decoupled (AdamW) decay of the parameters chosen below
    decay_embeddings: bool = False  # OLMo 2: no weight decay on embeddings
    decay_norms: bool = True  # OLMo 2 (decay_norm_and_bias: true)
    decay_biases: bool = True  # OLMo 2 (decay_norm_and_bias: true)
    grad_clip: float | None = 1.0  # clip the global gradient norm to this; null = no clipping
    fused: bool = False  # torch's fused AdamW kernel (fewer launches on a GPU) instead of the foreach one

    def validate(self) -> None:
        require_positive(self, "optim", "lr", "eps", "grad_clip")
        require_non_negative(self, "optim", "weight_decay")
        require(all(0 <= beta < 1 for beta in self.betas), "optim.betas", list(self.betas), "two numbers in [0, 1)")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm,)) or type(module).__name__.endswith("Norm")


def _wants_decay(module: nn.Module, name: str, cfg: OptimConfig) -> bool:
    if isinstance(module, nn.Embedding):
        return cfg.decay_embeddings
    if _is_norm(module):
        return cfg.decay_norms
    if name == "bias":
        return cfg.decay_biases
    return True


def _named_groups(model: nn.Module, cfg: OptimConfig) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Parameters by group: decayed, muP's hidden matrices (empty under standard parametrization), not decayed."""
    is_mup = getattr(getattr(model, "cfg", None), "parametrization", "standard") == "mup"
    hidden = hidden_matrix_names(model) if is_mup else set()
    groups: dict[str, list] = {"decay": [], "hidden": [], "no_decay": []}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full_name = f"{module_name}.{name}" if module_name else name
            if full_name in hidden:
                groups["hidden"].append((full_name, param))
            else:
                groups["decay" if _wants_decay(module, name, cfg) else "no_decay"].append((full_name, param))
    return groups


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Decayed, muP-hidden and not-decayed groups, each parameter in exactly one; the names go along for logging.

    muP's hidden group gets LR / m and weight decay * m; `lr` is set per group, so the schedule scales each.
    """
    m = getattr(getattr(model, "cfg", None), "width_mult", 1.0)
    named = _named_groups(model, cfg)
    settings = {"decay": (cfg.lr, cfg.weight_decay), "hidden": (cfg.lr / m, cfg.weight_decay * m),
                "no_decay": (cfg.lr, 0.0)}
    return [{"params": [p for _, p in named[key]], "names": [n for n, _ in named[key]], "lr": lr, "weight_decay": wd}
            for key, (lr, wd) in settings.items() if key != "hidden" or named[key]]


def build_adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`: the foreach implementation, deterministic on CPU, unless `optim.fused`."""
    groups = [g for g in param_groups(model, cfg) if g["params"]]
    kernel = {"fused": True} if cfg.fused else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **kernel)
