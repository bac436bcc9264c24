"""Block layouts, qkv clipping and norms, checked by composing the submodules by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kiln.model import ModelConfig
from kiln.model.norms import RMSNorm
from kiln.model.transformer import Block, apply_rope, rope_tables

SMALL = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=128)


def block_inputs(cfg: ModelConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    x = torch.randn(2, 10, cfg.d_model)
    return x, rope_tables(torch.arange(10).expand(2, 10), cfg.head_dim, cfg.rope_theta)


def random_block(cfg: ModelConfig) -> Block:
    """A block whose norm weights are not ones, so a norm in the wrong place changes the output."""
    torch.manual_seed(0)
    block = Block(cfg, layer=0)
    with torch.no_grad():
        for norm in (block.attn_norm, block.mlp_norm):
            norm.weight.uniform_(0.5, 1.5)
    return block


@torch.no_grad()
def test_reordered_block_norms_each_sublayer_output() -> None:
    cfg = ModelConfig(**SMALL, block="reordered")
    block, (x, rope) = random_block(cfg), block_inputs(cfg)
    h = x + block.attn_norm(block.attn(x, rope, None))
    expected = h + block.mlp_norm(block.mlp(h))
    torch.testing.assert_close(block(x, rope, None), expected)
    prenorm_h = x + block.attn(block.attn_norm(x), rope, None)
    assert not torch.allclose(block(x, rope, None), prenorm_h + block.mlp(block.mlp_norm(prenorm_h)))


@torch.no_grad()
def test_prenorm_block_norms_each_sublayer_input() -> None:
    cfg = ModelConfig(**SMALL, block="prenorm")
    block, (x, rope) = random_block(cfg), block_inputs(cfg)
    h = x + block.attn(block.attn_norm(x), rope, None)
    expected = h + block.mlp(block.mlp_norm(h))
    torch.testing.assert_close(block(x, rope, None), expected)
    reordered_h = x + block.attn_norm(block.attn(x, rope, None))
    assert not torch.allclose(block(x, rope, None), reordered_h + block.mlp_norm(block.mlp(reordered_h)))


@pytest.mark.parametrize("clip", [None, 8.0])
@torch.no_grad()
def test_clip_qkv_clamps_the_projections(clip: float | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blow the qkv output up with a hook, then look at what reaches attention."""
    cfg = ModelConfig(**SMALL, qk_norm="none", clip_qkv=clip)
    block, (x, rope) = random_block(cfg), block_inputs(cfg)
    block.attn.qkv.register_forward_hook(lambda module, args, out: out * 1000)
    seen = {}
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.update(q=q, k=k, v=v)
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    block(x, rope, None)
    v_max = seen["v"].abs().max().item()
    if clip is None:
        assert v_max > 100
        return
    assert v_max == pytest.approx(clip)  # the bound is reached: the hook made every value huge
    for name in ("q", "k"):  # RoPE rotates pairs (i, i + D/2); each pair's length stays within clip * sqrt(2)
        first, second = seen[name].chunk(2, dim=-1)
        assert torch.hypot(first, second).max().item() <= clip * 2**0.5 * (1 + 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@torch.no_grad()
def test_rmsnorm_matches_its_definition_in_fp32(dtype: torch.dtype) -> None:
    norm = RMSNorm(32, eps=1e-6)
    norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(4, 32) * 3).to(dtype)
    x32 = x.float()
    expected = x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    y = norm(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, expected.to(dtype))


@torch.no_grad()
def test_rmsnorm_stays_fp32_under_bf16_autocast() -> None:
    """OLMo 2 normalises in fp32: autocast must not lower the precision of the statistics."""
    norm = RMSNorm(512, eps=1e-6)
    x = torch.randn(8, 512) * 3
    expected = norm(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=1e-6)


def rotate_half_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as HF writes it, in float64: x cos + rotate_half(x) sin with the angle table repeated twice."""
    D = x.shape[-1]
    inv_freq = theta ** -(torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = positions.double()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat((-x2, x1), dim=-1) * angles.sin()


def test_rope_and_its_gradient_match_the_rotate_half_formula() -> None:
    positions = torch.arange(3, 15).expand(2, 12)
    x = torch.randn(2, 12, 3, 16, requires_grad=True)
    grad = torch.randn(2, 12, 3, 16)
    x64 = x.detach().double().requires_grad_()
    expected = rotate_half_reference(x64, positions, 10_000.0)
    expected.backward(grad.double())
    y = apply_rope(x, *rope_tables(positions, 16, 10_000.0))
    y.backward(grad)
    torch.testing.assert_close(y, expected.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x64.grad.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
def test_rmsnorm_gradient_matches_autograd_of_its_definition(affine: bool) -> None:
    norm = RMSNorm(32, eps=1e-6, affine=affine)
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 1.5)
    x = (torch.randn(4, 5, 32) * 3).requires_grad_()
    grad = torch.randn(4, 5, 32)
    x64 = x.detach().double().requires_grad_()
    weight64 = norm.weight.detach().double().requires_grad_() if affine else None
    expected = x64 / torch.sqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    if affine:
        expected = expected * weight64
    expected.backward(grad.double())
    norm(x).backward(grad)
    torch.testing.assert_close(x.grad, x64.grad.float(), atol=1e-5, rtol=1e-4)
    if affine:
        torch.testing.assert_close(norm.weight.grad, weight64.grad.float(), atol=1e-5, rtol=1e-4)
