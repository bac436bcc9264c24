"""The training loss: cross-entropy plus z-loss, from full logits or a block of rows at a time.

Both paths divide summed losses by the step's total target count (not each micro-batch's), so every token weighs
the same under gradient accumulation. The z-loss (PaLM; OLMo 2 and Chameleon use 1e-5) keeps the softmax normaliser
near 1. Gradients of both terms come from one softmax: d/dlogits = keep / n * ((g_ce + 2 w lse g_z) softmax -
g_ce onehot(target)).

The chunked path never holds the (N, V) fp32 logits, the largest tensor of a step at a 100k vocabulary: its
forward keeps only each row's logsumexp, and its backward recomputes one block of logits at a time (the idea of
Liger-Kernel's fused linear cross-entropy and of Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary
Language Models").
"""

from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100


def _wide(x: Tensor) -> Tensor:
    """At least fp32: half-precision logits are widened, float64 (the tests' reference) is kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _sums(logits: Tensor, safe: Tensor, keep: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(logsumexp per row, summed cross-entropy, summed lse^2) of fp32 logits over the kept rows."""
    lse = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, safe[:, None]).squeeze(1)
    return lse, ((lse - target) * keep).sum(), (lse.pow(2) * keep).sum()


def _logit_grad(logits: Tensor, lse: Tensor, safe: Tensor, keep: Tensor, n_targets: int, z_weight: float,
                g_ce: Tensor, g_z: Tensor) -> Tensor:
    """d(loss)/d(logits), written into `logits` (which it consumes)."""
    scale = keep / n_targets
    coef = scale * (g_ce + g_z * 2 * z_weight * lse)
    grad = logits.sub_(lse[:, None]).exp_().mul_(coef[:, None])  # (N, V) softmax, scaled per row
    return grad.scatter_add_(1, safe[:, None], (-scale * g_ce)[:, None])


class _CrossEntropyZLoss(torch.autograd.Function):
    """Cross-entropy and z-loss of (N, V) fp32 logits from one logsumexp, with a one-pass backward (autograd's
    version of the pair costs about twice plain cross-entropy: a second softmax pass and a scatter into a fresh
    N x V tensor)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, n_targets: int, z_weight: float) -> tuple[Tensor, Tensor]:
        keep, safe = (labels != IGNORE_INDEX).to(logits.dtype), labels.clamp(min=0)
        lse, ce, z = _sums(logits, safe, keep)
        ctx.save_for_backward(logits, lse, safe, keep)
        ctx.n_targets, ctx.z_weight = n_targets, z_weight
        return ce / n_targets, z * z_weight / n_targets

    @staticmethod
    def backward(ctx, g_ce: Tensor, g_z: Tensor) -> tuple[Tensor, None, None, None]:
        logits, lse, safe, keep = ctx.saved_tensors
        grad = _logit_grad(logits.clone(), lse, safe, keep, ctx.n_targets, ctx.z_weight, g_ce, g_z)
        return grad, None, None, None


class _ChunkedLinearCrossEntropyZLoss(torch.autograd.Function):
    """The output projection and the loss, `chunk` rows at a time; backward recomputes each block's logits."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, n_targets: int, z_weight: float,
                chunk: int) -> tuple[Tensor, Tensor]:
        wide = torch.promote_types(hidden.dtype, torch.float32)
        keep, safe = (labels != IGNORE_INDEX).to(wide), labels.clamp(min=0)
        lse = hidden.new_empty(hidden.shape[0], dtype=wide)
        ce = z = hidden.new_zeros((), dtype=wide)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _wide(hidden[rows] @ weight.t())
            lse[rows], block_ce, block_z = _sums(logits, safe[rows], keep[rows])
            ce, z = ce + block_ce, z + block_z
        ctx.save_for_backward(hidden, weight, lse, safe, keep)
        ctx.n_targets, ctx.z_weight, ctx.chunk = n_targets, z_weight, chunk
        return ce / n_targets, z * z_weight / n_targets

    @staticmethod
    def backward(ctx, g_ce: Tensor, g_z: Tensor) -> tuple[Tensor, Tensor, None, None, None, None]:
        hidden, weight, lse, safe, keep = ctx.saved_tensors
        grad_hidden, grad_weight = torch.empty_like(hidden), torch.zeros_like(weight, dtype=lse.dtype)
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            logits = _wide(hidden[rows] @ weight.t())
            grad = _logit_grad(logits, lse[rows], safe[rows], keep[rows], ctx.n_targets, ctx.z_weight, g_ce, g_z)
            grad_hidden[rows] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
            grad_weight += grad.t() @ _wide(hidden[rows])
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None, None


def loss_terms(logits: Tensor, labels: Tensor, n_targets: int, z_weight: float) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and z-loss (z_weight * logsumexp^2) of (B, T, V) logits, divided by `n_targets`."""
    return _CrossEntropyZLoss.apply(_wide(logits).flatten(0, 1), labels.flatten(), n_targets, z_weight)


def chunked_loss_terms(hidden: Tensor, weight: Tensor, labels: Tensor, n_targets: int, z_weight: float,
                       chunk: int) -> tuple[Tensor, Tensor]:
    """What `loss_terms(hidden @ weight.T, ...)` returns, from (B, T, C) hidden states and the (V, C) output
    weight, holding at most `chunk` rows of logits at once."""
    if chunk < 1:
        raise ValueError(f"chunk must be 1 or more rows, got {chunk}")
    return _ChunkedLinearCrossEntropyZLoss.apply(hidden.flatten(0, 1), weight, labels.flatten(), n_targets,
                                                 z_weight, chunk)
