"""AdamW whose weight decay skips embeddings and decays everything else, as OLMo 2 does.

OLMo 2's released configs (e.g. `configs/official-1124/OLMo2-7B-stage1.yaml`) set `decay_embeddings: false` and
`decay_norm_and_bias: true`: only the embeddings are excluded. Norm weights (QK-norm's included) and biases can be
excluded too, as switches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kiln.config import require, require_non_negative, require_positive


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

    def validate(self) -> None:
        require_positive(self, "optim", "lr", "eps", "grad_clip")
        require_non_negative(self, "optim", "weight_decay")
        require(all(0 <= beta < 1 for beta in self.betas), "optim.betas", list(self.betas), "two numbers in [0, 1)")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm,)) or type(module).__name__.endswith("Norm")


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Two groups, decayed and not decayed, each parameter in exactly one; the names go along for logging."""
    decay, no_decay = [], []
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, nn.Embedding):
                wants_decay = cfg.decay_embeddings
            elif _is_norm(module):
                wants_decay = cfg.decay_norms
            elif name == "bias":
                wants_decay = cfg.decay_biases
            else:
                wants_decay = True
            full_name = f"{module_name}.{name}" if module_name else name
            (decay if wants_decay else no_decay).append((full_name, param))
    return [
        {"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0},
    ]


def build_adamw(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the foreach implementation, which is deterministic on CPU."""
    groups = [g for g in param_groups(model, cfg) if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, foreach=True)
