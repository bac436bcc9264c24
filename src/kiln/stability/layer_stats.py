"""Per-layer diagnostics, taken from the outside of the model with hooks every N steps.

Keys: `layer/{i}/grad_norm`, `layer/{i}/weight_norm`, `layer/{i}/update_ratio` (||W_after - W_before|| / ||W_before||
of the step), `layer/{i}/act_rms` and `layer/{i}/act_max` (the block's output), `layer/{i}/attn_logit_max` (largest
allowed pre-softmax score q.k/sqrt(D), or q.k times muP's attention scale), and `output_logit_max`.

Every value covers the whole global batch and the whole model, whatever the strategy: norms sum the squares of
FSDP's shards over the mesh (as gradient clipping does), activation statistics cover every micro-batch of every
rank (sums and maxima reduced across ranks). So 2 FSDP ranks report what one process reports for the same batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kiln.distributed import local_part, max_across_ranks, sum_across_ranks, sum_over_shards
from kiln.model.transformer import apply_rope

QUERY_CHUNK = 256  # queries scored at a time: a whole (H, T, T) score tensor would not fit at long context


def _block_params(model: nn.Module) -> list[list[Tensor]]:
    return [list(block.parameters()) for block in model.blocks]


def _norms(groups: list[list[Tensor | None]], like: Tensor) -> list[float]:
    """L2 norm of each group of (possibly FSDP-sharded) tensors; `like` tells how they are sharded."""
    zero = torch.zeros((), device=local_part(like).device)
    squares = torch.stack([sum((local_part(t).detach().float().pow(2).sum() for t in group if t is not None), zero)
                           for group in groups])
    return sum_over_shards(squares, like).sqrt().tolist()


def grad_and_weight_norms(model: nn.Module) -> dict[str, float]:
    params = _block_params(model)
    grads = _norms([[p.grad for p in layer] for layer in params], params[0][0])
    weights = _norms(params, params[0][0])
    out = {}
    for i, (grad, weight) in enumerate(zip(grads, weights, strict=True)):
        out[f"layer/{i}/grad_norm"], out[f"layer/{i}/weight_norm"] = grad, weight
    return out


def snapshot(model: nn.Module) -> list[list[Tensor]]:
    """This rank's part of every block weight, before the update."""
    return [[local_part(p).detach().clone() for p in params] for params in _block_params(model)]


def update_ratios(model: nn.Module, before: list[list[Tensor]]) -> dict[str, float]:
    params = _block_params(model)
    deltas = [[local_part(p).detach() - old for p, old in zip(layer, olds, strict=True)]
              for layer, olds in zip(params, before, strict=True)]
    delta_norms, old_norms = _norms(deltas, params[0][0]), _norms(before, params[0][0])
    return {f"layer/{i}/update_ratio": delta / max(old, 1e-12)
            for i, (delta, old) in enumerate(zip(delta_norms, old_norms, strict=True))}


def _queries_and_keys(attn: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """q and k (B, T, H, D) in fp32 as `Attention.forward` computes them, keys repeated to every query head."""
    cfg, (B, T, _) = attn.cfg, x.shape
    qkv = attn.qkv(x)
    if cfg.clip_qkv is not None:
        qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
    q, k, _ = qkv.split((attn.q_dim, attn.kv_dim, attn.kv_dim), dim=-1)
    q, k = q.float(), k.float()
    if cfg.qk_norm == "full":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = q.view(B, T, cfg.n_heads, cfg.head_dim), k.view(B, T, cfg.kv_heads, cfg.head_dim)
    if cfg.qk_norm == "per_head":
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, *rope).float(), apply_rope(k, *rope).float()
    return q, k.repeat_interleave(cfg.n_heads // cfg.kv_heads, dim=2)


def _causal(start: int, end: int, device: torch.device) -> Tensor:
    """(end - start, end) bool: query positions start..end-1 may see keys up to themselves."""
    return torch.arange(end, device=device)[None, :] <= torch.arange(start, end, device=device)[:, None]


@torch.no_grad()
def attention_logit_max(attn: nn.Module, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None) -> float:
    """The largest pre-softmax score that attention allows (causal, or `mask`), over every sequence of `x`."""
    q, k = _queries_and_keys(attn, x, rope)
    B, T, _, _ = q.shape
    scale = attn.cfg.attention_scale
    best = -math.inf
    for b in range(B):
        for start in range(0, T, QUERY_CHUNK):
            end = min(start + QUERY_CHUNK, T)
            scores = torch.einsum("qhd,khd->hqk", q[b, start:end], k[b, :end]) * scale  # (H, Q, end)
            if mask is None:
                allowed = _causal(start, end, x.device)
            else:
                allowed = mask[min(b, mask.shape[0] - 1), 0, start:end, :end]
            best = max(best, float(scores.masked_fill(~allowed, -math.inf).max()))
    return best


class ActivationProbe:
    """Forward hooks recording block outputs, attention-logit maxima and the output-logit maximum of a step's
    forward passes; `reduce` combines them over ranks. Leave it (`__exit__`) before evaluation passes run."""

    def __init__(self, model: nn.Module) -> None:
        n = len(model.blocks)
        self.model, self.handles = model, []
        self.square_sums, self.counts, self.act_max, self.attn_max = [0.0] * n, [0.0] * n, [0.0] * n, [-math.inf] * n
        self.output_max = 0.0

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
            out = output.detach().float()
            self.square_sums[i] += float(out.pow(2).sum())
            self.counts[i] += out.numel()
            self.act_max[i] = max(self.act_max[i], float(out.abs().max()))
        return hook

    def _attn_hook(self, i: int):
        def hook(module, inputs, output):
            x, rope, mask = inputs[:3]
            self.attn_max[i] = max(self.attn_max[i], attention_logit_max(module, x, rope, mask))
        return hook

    def _output_hook(self, module, inputs, output):
        logits_max = getattr(output, "logit_max", None)  # the chunked loss's (kiln.train.loss), which has no logits
        value = output.detach().float().abs().max() if logits_max is None else logits_max
        self.output_max = max(self.output_max, float(value))

    def reduce(self, device: torch.device) -> dict[str, float]:
        """The statistics over every rank's passes; every rank must call this (it holds collectives)."""
        n = len(self.counts)
        sums = sum_across_ranks(self.square_sums + self.counts, device)
        maxima = max_across_ranks(self.act_max + self.attn_max + [self.output_max], device)
        out = {"output_logit_max": maxima[-1]}
        for i in range(n):
            out[f"layer/{i}/act_rms"] = math.sqrt(sums[i] / max(sums[n + i], 1.0))
            out[f"layer/{i}/act_max"], out[f"layer/{i}/attn_logit_max"] = maxima[i], maxima[n + i]
        return out
