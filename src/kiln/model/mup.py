"""muP (Maximal Update Parametrization) for AdamW: the rules per parameter class, and their removal for export.

A model is tuned at a base width d_base; at width d the multiplier is m = d / d_base (`ModelConfig.width_mult`; the
MLP width and head dimension are taken to scale by the same m). Under `parametrization: mup`:

| parameter class                            | init std          | Adam LR | weight decay | multiplier      |
|--------------------------------------------|-------------------|---------|--------------|-----------------|
| hidden matrices (q/k/v, attn out, MLP)     | base std/sqrt(m)  | LR / m  | wd * m       |                 |
| embeddings, output head, norms, biases     | base std          | LR      | wd           |                 |
| logits                                     |                   |         |              | output_mult / m |
| attention scores q.k                       |                   |         |              | sqrt(D_base)/D  |

Sources: Yang et al., 2022, "Tensor Programs V" (TP5), Table 3 (muP for Adam: hidden weights' init variance and LR
scale as 1/fan_in) and Table 8 / microsoft/mup's `MuReadout` form of the output layer, which this follows: the head
keeps its base init and Adam LR and the logits are multiplied by output_mult / m (the equivalent Lemma J.1 form
would instead shrink the head's init and LR). Attention uses 1/D instead of 1/sqrt(D) (TP5, section 4 and
appendix), written sqrt(D_base)/D so the base model keeps 1/sqrt(D). AdamW's decoupled decay multiplies the LR, so
a hidden matrix's weight decay is multiplied by m to keep lr * wd, the per-step shrink, independent of width.
At m = 1 every rule is the identity: a muP model at its base width is the standard model, weight for weight.
"""

from __future__ import annotations

import torch
from torch import nn

from kiln.errors import KilnError
from kiln.model.config import ModelConfig

HIDDEN_MATRICES = ("attn.qkv.weight", "attn.out.weight", "mlp.up.weight", "mlp.down.weight")


def is_hidden_matrix(name: str) -> bool:
    """A block's matmul weight (both dimensions grow with width): muP scales its init, LR and weight decay."""
    return name.startswith("blocks.") and name.endswith(HIDDEN_MATRICES)


def hidden_matrix_names(model: nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters() if is_hidden_matrix(name)}


def to_standard(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The standard-parametrization config and weights that compute the same logits as a muP model.

    The logit multiplier goes into the head (a tied model is untied, as its input embedding must stay as it is);
    the attention correction sqrt(D_base)/D * sqrt(D) = 1/sqrt(m) goes into the query: the q-norm gain under
    QK-norm (the norm is linear in its gain, RoPE is linear), else the query rows of the fused projection.
    """
    if cfg.parametrization != "mup":
        return cfg, state
    if cfg.qk_norm == "none" and cfg.clip_qkv is not None:
        raise KilnError("cannot fold muP's attention scale into a model with clip_qkv and no QK-norm: the clamp sits "
                        "between the query projection and the scale; export needs qk_norm or clip_qkv null")
    state = dict(state)
    head = state.get("head.weight", state["embed.weight"])
    state["head.weight"] = head * cfg.output_mult
    state.update(_fold_query_scale(cfg, state, cfg.attention_scale * cfg.head_dim**0.5))
    norm_affine = cfg.norm_affine or cfg.qk_norm != "none"  # a folded q-norm gain needs norm weights to live in
    if norm_affine and not cfg.norm_affine:
        state.update(_unit_norm_weights(cfg, state))
    standard = cfg.replace(parametrization="standard", mup_base_d_model=None, mup_output_mult=1.0,
                           tie_embeddings=False, norm_affine=norm_affine)
    return standard, state


def _fold_query_scale(cfg: ModelConfig, state: dict[str, torch.Tensor], c: float) -> dict[str, torch.Tensor]:
    """Query tensors of every block multiplied by c."""
    folded = {}
    q_dim = cfg.n_heads * cfg.head_dim
    for i in range(cfg.n_layers):
        prefix = f"blocks.{i}.attn."
        if cfg.qk_norm != "none":
            dim = q_dim if cfg.qk_norm == "full" else cfg.head_dim
            gain = state.get(prefix + "q_norm.weight", torch.ones(dim, dtype=state["embed.weight"].dtype))
            folded[prefix + "q_norm.weight"] = gain * c
            continue
        for kind in ("weight", "bias"):
            if prefix + f"qkv.{kind}" in state:
                tensor = state[prefix + f"qkv.{kind}"].clone()
                tensor[:q_dim] *= c
                folded[prefix + f"qkv.{kind}"] = tensor
    return folded


def _unit_norm_weights(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of ones (and zero biases) for every norm of a non-affine model that does not have them yet."""
    from kiln.model.transformer import Transformer

    with torch.device("meta"):
        shapes = Transformer(cfg.replace(norm_affine=True, parametrization="standard")).state_dict()
    dtype = state["embed.weight"].dtype
    return {name: (torch.ones if name.endswith("weight") else torch.zeros)(t.shape, dtype=dtype)
            for name, t in shapes.items() if "norm." in name and name not in state}
