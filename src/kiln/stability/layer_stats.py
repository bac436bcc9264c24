"""Per-layer diagnostics, taken from the outside of the model with hooks every N steps.

Keys: `layer/{i}/grad_norm`, `layer/{i}/weight_norm`, `layer/{i}/update_ratio` (||W_after - W_before|| / ||W_before||
of the step), `layer/{i}/act_rms` and `layer/{i}/act_max` (the block's output), `layer/{i}/attn_logit_max` (largest
causal pre-softmax score q.k/sqrt(D) of the first sequence), and `output_logit_max`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kiln.model.transformer import apply_rope


def _block_params(model: nn.Module) -> list[list[Tensor]]:
    return [list(block.parameters()) for block in model.blocks]


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(t.detach().float().pow(2).sum()) for t in tensors))


def grad_and_weight_norms(model: nn.Module) -> dict[str, float]:
    out = {}
    for i, params in enumerate(_block_params(model)):
        out[f"layer/{i}/grad_norm"] = _norm([p.grad for p in params if p.grad is not None])
        out[f"layer/{i}/weight_norm"] = _norm(params)
    return out


def snapshot(model: nn.Module) -> list[list[Tensor]]:
    return [[p.detach().clone() for p in params] for params in _block_params(model)]


def update_ratios(model: nn.Module, before: list[list[Tensor]]) -> dict[str, float]:
    out = {}
    for i, (params, old) in enumerate(zip(_block_params(model), before, strict=True)):
        delta = _norm([p.detach() - o for p, o in zip(params, old, strict=True)])
        out[f"layer/{i}/update_ratio"] = delta / max(_norm(old), 1e-12)
    return out


@torch.no_grad()
def attention_logit_max(attn: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor]) -> float:
    """Recompute q and k of the first sequence the way `Attention.forward` does and take the largest causal score."""
    cfg = attn.cfg
    qkv = attn.qkv(x[:1])
    if cfg.clip_qkv is not None:
        qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
    q, k, _ = qkv.split((attn.q_dim, attn.kv_dim, attn.kv_dim), dim=-1)
    if cfg.qk_norm == "full":
        q, k = attn.q_norm(q), attn.k_norm(k)
    T = x.shape[1]
    q, k = q.view(1, T, cfg.n_heads, cfg.head_dim), k.view(1, T, cfg.kv_heads, cfg.head_dim)
    if cfg.qk_norm == "per_head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    cos, sin = (t[:1] for t in rope)
    q, k = apply_rope(q, cos, sin).float(), apply_rope(k, cos, sin).float()
    k = k.repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)  # (1, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return float(scores.masked_fill(~causal, -math.inf).max())


class ActivationProbe:
    """Forward hooks that record block outputs, attention-logit maxima and the output-logit maximum of one pass."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.stats, self.handles = model, {}, []

    def __enter__(self) -> ActivationProbe:
        for i, block in enumerate(self.model.blocks):
            self.handles.append(block.register_forward_hook(self._block_hook(i)))
            self.handles.append(block.attn.register_forward_hook(self._attn_hook(i)))
        self.handles.append(self.model.register_forward_hook(self._output_hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _block_hook(self, i: int):
        def hook(module, inputs, output):
            if f"layer/{i}/act_rms" not in self.stats:  # first micro-batch only
                out = output.detach().float()
                self.stats[f"layer/{i}/act_rms"] = float(out.pow(2).mean().sqrt())
                self.stats[f"layer/{i}/act_max"] = float(out.abs().max())
        return hook

    def _attn_hook(self, i: int):
        def hook(module, inputs, output):
            key = f"layer/{i}/attn_logit_max"
            if key not in self.stats:
                self.stats[key] = attention_logit_max(module, inputs[0], inputs[1])
        return hook

    def _output_hook(self, module, inputs, output):
        self.stats.setdefault("output_logit_max", float(output.detach().float().abs().max()))
