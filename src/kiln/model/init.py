"""All weight initialisation, in one place. Every draw is a normal truncated at 3 standard deviations.

d = width, f = MLP hidden size, l = 0-based layer index, L = number of layers.

| tensor                          | normal (OLMo 2) | mitchell (OLMo 1)     | scaled_embed (Spike No More) |
|---------------------------------|-----------------|-----------------------|------------------------------|
| embedding                       | 0.02            | 1/sqrt(d)             | 1.0                          |
| attention q, k, v (`qkv`)       | 0.02            | 1/sqrt(d)             | sqrt(2/(5d))                 |
| attention output (`out`)        | 0.02            | 1/sqrt(2 d (l+1))     | sqrt(2/(5d)) / sqrt(2L)      |
| MLP input (`up`: gate and up)   | 0.02            | 1/sqrt(d)             | sqrt(2/(5d))                 |
| MLP output (`down`)             | 0.02            | 1/sqrt(2 f (l+1))     | sqrt(2/(5d)) / sqrt(2L)      |
| output head (untied)            | 0.02            | 1/sqrt(d)             | sqrt(2/(5d))                 |
| norm weights / all biases       | 1 / 0           | 1 / 0                 | 1 / 0                        |

Sources: OLMo 2 (OLMo et al., 2024, section 3.2: every parameter from N(0, 0.02)); OLMo 1's "mitchell" init
(OLMo-0424 configs); Takase et al., 2023, "Spike No More": embeddings with std about 1 keep the gradient of
layer norms small, with the small sub-layer init sqrt(2/(5d)) of Nguyen & Salazar (2019) and output
projections scaled down by sqrt(2L). The normal std is `ModelConfig.init_std`.

Under `parametrization: mup` every std above is taken at the base width (d and f divided by m = width_mult), and the
four hidden matrices' stds are then divided by sqrt(m): see kiln.model.mup for the rules and their sources.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from kiln.model.config import ModelConfig
from kiln.model.norms import LayerNorm, RMSNorm

if TYPE_CHECKING:
    from kiln.model.transformer import Transformer


def trunc_normal_(tensor: torch.Tensor, std: float, generator: torch.Generator | None = None) -> None:
    nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-3 * std, b=3 * std, generator=generator)


def _scheme_layer_stds(cfg: ModelConfig, d: float, f: float, layer: int) -> dict[str, float]:
    """Std of each weight of block `layer` under the model's scheme, for width d and MLP hidden size f."""
    if cfg.init == "normal":
        return dict.fromkeys(("qkv", "out", "up", "down"), cfg.init_std)
    if cfg.init == "mitchell":
        depth = layer + 1
        return {"qkv": d**-0.5, "out": (2 * d * depth) ** -0.5, "up": d**-0.5, "down": (2 * f * depth) ** -0.5}
    small = math.sqrt(2 / (5 * d))
    return {"qkv": small, "out": small / math.sqrt(2 * cfg.n_layers), "up": small,
            "down": small / math.sqrt(2 * cfg.n_layers)}


def layer_stds(cfg: ModelConfig, layer: int) -> dict[str, float]:
    """Std of each weight of one block. Under muP: the scheme's std at the base width, / sqrt(m) (kiln.model.mup)."""
    m = cfg.width_mult
    stds = _scheme_layer_stds(cfg, cfg.d_model / m, cfg.d_ff / m, layer)
    return {name: std / m**0.5 for name, std in stds.items()}


def embedding_stds(cfg: ModelConfig) -> tuple[float, float]:
    """(embedding std, output head std); under muP both are the base width's, whatever the width."""
    d = cfg.d_model / cfg.width_mult
    if cfg.init == "normal":
        return cfg.init_std, cfg.init_std
    if cfg.init == "mitchell":
        return d**-0.5, d**-0.5
    return 1.0, math.sqrt(2 / (5 * d))


@torch.no_grad()
def init_weights(model: Transformer, generator: torch.Generator | None = None) -> None:
    """(Re)initialise every parameter of `model` according to `model.cfg.init`."""
    embed_std, head_std = embedding_stds(model.cfg)
    trunc_normal_(model.embed.weight, embed_std, generator)
    if model.head is not None:
        trunc_normal_(model.head.weight, head_std, generator)
    for block in model.blocks:
        stds = layer_stds(model.cfg, block.layer)
        linears = {"qkv": block.attn.qkv, "out": block.attn.out, "up": block.mlp.up, "down": block.mlp.down}
        for name, linear in linears.items():
            trunc_normal_(linear.weight, stds[name], generator)
            if linear.bias is not None:
                linear.bias.zero_()
    for module in model.modules():
        if isinstance(module, (RMSNorm, LayerNorm)):
            if module.weight is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
