"""Initialisation statistics per scheme, against the table in `kiln.model.init`, recomputed here by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kiln.model import ModelConfig, Transformer

D, F, L = 256, 768, 3


def truncated_std_factor(bound: float = 3.0) -> float:
    """Std of a standard normal truncated to [-bound, bound]: sqrt(1 - 2 b phi(b) / (2 Phi(b) - 1))."""
    density = math.exp(-bound**2 / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(bound / math.sqrt(2))
    return math.sqrt(1 - 2 * bound * density / mass)


def expected_stds(scheme: str) -> dict[str, float]:
    """Parameter name -> the std the table in init.py gives it, for the model built below."""
    if scheme == "normal":
        embed = qkv = up = head = 0.02
        out = down = [0.02] * L
    elif scheme == "mitchell":
        embed = qkv = up = head = 1 / math.sqrt(D)
        out = [1 / math.sqrt(2 * D * (layer + 1)) for layer in range(L)]
        down = [1 / math.sqrt(2 * F * (layer + 1)) for layer in range(L)]
    else:
        small = math.sqrt(2 / (5 * D))
        embed, qkv, up, head = 1.0, small, small, small
        out = down = [small / math.sqrt(2 * L)] * L
    stds = {"embed.weight": embed, "head.weight": head}
    for layer in range(L):
        stds |= {f"blocks.{layer}.attn.qkv.weight": qkv, f"blocks.{layer}.attn.out.weight": out[layer],
                 f"blocks.{layer}.mlp.up.weight": up, f"blocks.{layer}.mlp.down.weight": down[layer]}
    return stds


def build(scheme: str, **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1000, d_model=D, n_layers=L, n_heads=4, d_ff=F, init=scheme, **overrides)
    return Transformer(cfg)


@pytest.mark.parametrize("scheme", ["normal", "mitchell", "scaled_embed"])
def test_weight_stds_match_the_table_and_are_truncated(scheme: str) -> None:
    params = dict(build(scheme).named_parameters())
    expected = expected_stds(scheme)
    for name, std in expected.items():
        weight = params[name].detach().double()
        assert abs(weight.mean().item()) < 0.02 * std, name
        assert weight.std().item() == pytest.approx(std * truncated_std_factor(), rel=0.02), name
        assert weight.abs().max().item() <= 3 * std * (1 + 1e-6), name
    matrices = {name for name, p in params.items() if p.ndim == 2}
    assert matrices == set(expected), "every weight matrix has a row in the table"


@pytest.mark.parametrize("scheme", ["normal", "mitchell", "scaled_embed"])
def test_norms_are_ones_and_biases_zeros(scheme: str) -> None:
    model = build(scheme, norm="layernorm", norm_bias=True, bias=True, qk_norm="per_head")
    vectors = {name: p for name, p in model.named_parameters() if p.ndim == 1}
    assert vectors, "the config has norm weights and biases"
    for name, p in vectors.items():
        expected = torch.zeros_like(p) if name.endswith("bias") else torch.ones_like(p)
        torch.testing.assert_close(p.detach(), expected, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("scheme", ["normal", "mitchell", "scaled_embed"])
def test_initial_loss_is_near_uniform(scheme: str, tied: bool) -> None:
    """A fresh model predicts about uniformly: cross-entropy on random tokens within 1 nat of ln(vocab)."""
    if scheme == "scaled_embed" and tied:
        with pytest.raises(ValueError, match="scaled_embed.*tie_embeddings"):
            build(scheme, tie_embeddings=True)
        return
    model = build(scheme, tie_embeddings=tied)
    tokens = torch.randint(0, 1000, (4, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(tokens[:, :-1])[..., :1000]
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    assert abs(loss.item() - math.log(1000)) < 1.0, loss.item()
