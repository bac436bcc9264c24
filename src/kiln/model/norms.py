"""The norms of the OLMo family, computed in fp32 whatever the activation dtype: RMSNorm (OLMo 2, Llama) and
LayerNorm (OLMo 1's non-parametric one with affine=False). Their own file so that kiln.model.init can name them
without importing the transformer that calls it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import ModelConfig


class _RMSNormFunction(torch.autograd.Function):
    """x / rms(x) * weight in fp32, with a hand-written backward.

    On CPU, autograd splits the backward of `F.rms_norm` into about a dozen elementwise kernels; this one
    reads each tensor about half as often, which shows in the training step of small models.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
        x32 = x.float()
        rstd = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, rstd, weight)
        y = x32 * rstd
        return (y if weight is None else y * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, None]:
        x, rstd, weight = ctx.saved_tensors
        x_hat, grad = x.float() * rstd, grad.float()
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (grad * x_hat).flatten(0, -2).sum(0).to(weight.dtype)
        grad_x_hat = grad if weight is None else grad * weight.float()
        # d/dx of x_hat = x * rstd: rstd * (g - x_hat * mean(g * x_hat)) for g = grad_x_hat.
        mean_dot = (grad_x_hat * x_hat).mean(-1, keepdim=True)
        grad_x = torch.addcmul(grad_x_hat, x_hat, mean_dot, value=-1).mul_(rstd)
        return grad_x.to(x.dtype), grad_weight, None


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32 whatever the activation dtype, as OLMo 2 does."""

    def __init__(self, dim: int, eps: float, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        return _RMSNormFunction.apply(x, self.weight, self.eps)


class LayerNorm(nn.LayerNorm):
    """LayerNorm in fp32; with affine=False it is OLMo 1's non-parametric norm."""

    def forward(self, x: Tensor) -> Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The norm `cfg.norm` names, `dim` wide, with the config's eps, affine and bias."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, cfg.norm_eps, affine=cfg.norm_affine)
    return LayerNorm(dim, eps=cfg.norm_eps, elementwise_affine=cfg.norm_affine, bias=cfg.norm_bias)
