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

from typing import NamedTuple

import torch
from torch import Tensor

IGNORE_INDEX = -100
AUTO_CHUNK_ROWS = 1024  # rows per block when `trainer.loss_chunk` is unset (docs/performance.md)
AUTO_CHUNK_VOCAB = 32768  # smallest (padded) vocabulary at which the chunked path is chosen by default
AUTO_CHUNK_GPU_SHARE = 0.1  # on a GPU, chunk by default only when fp32 logits would take this share of its memory


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
    """The output projection and the loss, `chunk` rows at a time.

    When gradients are wanted, forward also computes them, block by block, for a backward that scales both terms
    alike (the training step's `ce + z`, times the world size): backward then only multiplies, and the step does
    the three matmuls of the full path. Any other pair of upstream gradients recomputes each block's logits."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, n_targets: int, z_weight: float,
                chunk: int, want_grads: bool) -> tuple[Tensor, Tensor]:
        wide = torch.promote_types(hidden.dtype, torch.float32)
        keep, safe = (labels != IGNORE_INDEX).to(wide), labels.clamp(min=0)
        lse = hidden.new_empty(hidden.shape[0], dtype=wide)
        ce = z = hidden.new_zeros((), dtype=wide)
        logit_max = hidden.new_zeros((), dtype=wide)
        grads = _empty_grads(hidden, weight, wide) if want_grads else None
        one = hidden.new_ones((), dtype=wide)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = _wide(hidden[rows] @ weight.t())
            lse[rows], block_ce, block_z = _sums(logits, safe[rows], keep[rows])
            ce, z = ce + block_ce, z + block_z
            logit_max = torch.maximum(logit_max, logits.abs().amax())
            if grads is not None:
                grad = _logit_grad(logits, lse[rows], safe[rows], keep[rows], n_targets, z_weight, one, one)
                _add_block_grads(grads, grad, hidden, weight, rows)
        ctx.save_for_backward(hidden, weight, lse, safe, keep)
        ctx.grads, ctx.n_targets, ctx.z_weight, ctx.chunk = grads, n_targets, z_weight, chunk
        ctx.mark_non_differentiable(logit_max)
        return ce / n_targets, z * z_weight / n_targets, logit_max

    @staticmethod
    def backward(ctx, g_ce: Tensor, g_z: Tensor, _g_max: Tensor) -> tuple[Tensor, Tensor, None, None, None, None,
                                                                          None]:
        hidden, weight, lse, safe, keep = ctx.saved_tensors
        grads, ctx.grads = ctx.grads, None
        if grads is not None and torch.equal(g_ce, g_z):
            grad_hidden, grad_weight = (g.mul_(g_ce) for g in grads)
        else:
            grad_hidden, grad_weight = grads = _empty_grads(hidden, weight, lse.dtype)
            for start in range(0, hidden.shape[0], ctx.chunk):
                rows = slice(start, start + ctx.chunk)
                logits = _wide(hidden[rows] @ weight.t())
                grad = _logit_grad(logits, lse[rows], safe[rows], keep[rows], ctx.n_targets, ctx.z_weight, g_ce,
                                   g_z)
                _add_block_grads(grads, grad, hidden, weight, rows)
        return grad_hidden.to(hidden.dtype), grad_weight.to(weight.dtype), None, None, None, None, None


def _empty_grads(hidden: Tensor, weight: Tensor, wide: torch.dtype) -> tuple[Tensor, Tensor]:
    """Gradient buffers of the hidden states (filled block by block) and of the weight (summed over blocks)."""
    return torch.empty_like(hidden), torch.zeros_like(weight, dtype=wide)


def _add_block_grads(grads: tuple[Tensor, Tensor], grad: Tensor, hidden: Tensor, weight: Tensor,
                     rows: slice) -> None:
    """Backpropagate one block's logit gradient through `hidden[rows] @ weight.T` into the buffers. Half-precision
    inputs (autocast's) multiply in their precision, as autocast's backward of a linear layer does, and only the sum
    over blocks is kept in fp32."""
    low = grad.to(weight.dtype)
    grads[0][rows] = (low @ weight).to(hidden.dtype)
    if weight.dtype == grads[1].dtype:
        grads[1].addmm_(grad.t(), _wide(hidden[rows]))
    else:
        grads[1].add_(low.t() @ hidden[rows].to(weight.dtype))


def loss_terms(logits: Tensor, labels: Tensor, n_targets: int, z_weight: float) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and z-loss (z_weight * logsumexp^2) of (B, T, V) logits, divided by `n_targets`."""
    return _CrossEntropyZLoss.apply(_wide(logits).flatten(0, 1), labels.flatten(), n_targets, z_weight)


class ChunkedLoss(NamedTuple):
    """The two loss terms, and the largest |logit| seen on the way (the stability monitor's output_logit_max)."""

    ce: Tensor
    z: Tensor
    logit_max: Tensor


def chunked_loss_terms(hidden: Tensor, weight: Tensor, labels: Tensor, n_targets: int, z_weight: float,
                       chunk: int) -> ChunkedLoss:
    """What `loss_terms(hidden @ weight.T, ...)` returns, from (B, T, C) hidden states and the (V, C) output
    weight, holding at most `chunk` rows of logits at once."""
    if chunk < 1:
        raise ValueError(f"chunk must be 1 or more rows, got {chunk}")
    want_grads = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    device = hidden.device.type
    if torch.is_autocast_enabled(device):  # cast as autocast casts a linear layer's inputs
        low = torch.get_autocast_dtype(device)
        hidden, weight = hidden.to(low), weight.to(low)
    return ChunkedLoss(*_ChunkedLinearCrossEntropyZLoss.apply(hidden.flatten(0, 1), weight, labels.flatten(),
                                                               n_targets, z_weight, chunk, want_grads))


def loss_chunk_rows(setting: int | None, padded_vocab: int, rows: int, gpu_memory: int | None = None) -> int:
    """Rows per block of the chunked loss, 0 for whole logits: `setting` when given, else blocks of
    AUTO_CHUNK_ROWS from AUTO_CHUNK_VOCAB up, where the logits dominate a step's memory, when a micro-batch's
    `rows` (batch x sequence) make more than one block: a single block saves nothing and costs a little.

    On a CPU the blocks are also faster (1.15x, docs/performance.md); on a GPU they cost about 5% of the speed
    (olmo2-1b on an H200), so with `gpu_memory` (bytes) they are chosen only where the fp32 logits would take
    AUTO_CHUNK_GPU_SHARE of it."""
    if setting is not None:
        return setting
    if padded_vocab < AUTO_CHUNK_VOCAB or rows <= AUTO_CHUNK_ROWS:
        return 0
    if gpu_memory is not None and rows * padded_vocab * 4 < AUTO_CHUNK_GPU_SHARE * gpu_memory:
        return 0
    return AUTO_CHUNK_ROWS
