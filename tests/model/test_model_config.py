"""Config validation, parameter counts (against built modules and published sizes) and FLOPs per token."""

from __future__ import annotations

import pytest
import torch

from kiln.model import PRESETS, ConfigError, ModelConfig, Transformer, flops_per_token, param_counts, preset

# Published OLMo 2 sizes with the 100,352-row padded Dolma 2 vocabulary (OLMo 2 tech report).
PUBLISHED = {"olmo2-1b": 1.48e9, "olmo2-7b": 7.30e9, "olmo2-13b": 13.72e9}


def module_param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_olmo2_presets_have_their_published_size_and_build_on_meta(name: str) -> None:
    cfg = preset(name, vocab_size=100352)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert all(p.is_meta for p in model.parameters()), "building on meta must allocate no parameter memory"
    assert module_param_count(model) == param_counts(cfg)["total"]
    assert param_counts(cfg)["total"] == pytest.approx(PUBLISHED[name], rel=0.005)


# Training context of each published model (OLMo 2 report Table 1; OLMo-0424 config: max_sequence_length 4096).
PUBLISHED_CONTEXT = {"olmo2-1b": 4096, "olmo2-7b": 4096, "olmo2-13b": 4096, "olmo1-7b": 4096}


@pytest.mark.parametrize("name", sorted(PUBLISHED_CONTEXT))
def test_presets_train_at_their_published_context(name: str) -> None:
    assert preset(name).max_seq_len == PUBLISHED_CONTEXT[name]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_on_meta_with_its_counted_parameters(name: str) -> None:
    cfg = preset(name)
    with torch.device("meta"):
        model = Transformer(cfg)
    assert module_param_count(model) == param_counts(cfg)["total"]


SMALL = dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=96)
VARIANTS = {
    "untied": {},
    "tied": dict(tie_embeddings=True),
    "gqa": dict(n_kv_heads=2),
    "mqa-per-head-qk-norm": dict(n_kv_heads=1, qk_norm="per_head"),
    "no-qk-norm": dict(qk_norm="none"),
    "layernorm-affine-bias": dict(norm="layernorm", norm_bias=True),
    "layernorm-affine": dict(norm="layernorm"),
    "layernorm-nonparametric": dict(norm="layernorm", norm_affine=False, qk_norm="none"),
    "rmsnorm-nonparametric": dict(norm_affine=False),
    "gelu-bias": dict(mlp="gelu", bias=True),
    "relu-prenorm": dict(mlp="relu", block="prenorm"),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_param_counts_match_the_built_module(overrides: dict) -> None:
    cfg = ModelConfig(**SMALL, **overrides)
    model = Transformer(cfg)
    counts = param_counts(cfg)
    assert counts["total"] == module_param_count(model)
    embedding = model.embed.weight.numel() + (0 if model.head is None else model.head.weight.numel())
    assert counts["embedding"] == embedding
    assert counts["non_embedding"] == counts["total"] - embedding


def test_layernorm_without_affine_has_no_parameters() -> None:
    model = Transformer(ModelConfig(**SMALL, norm="layernorm", norm_affine=False, qk_norm="full"))
    norms = [model.norm] + [m for b in model.blocks for m in (b.attn_norm, b.mlp_norm, b.attn.q_norm, b.attn.k_norm)]
    assert all(list(norm.parameters()) == [] for norm in norms)
    x = torch.randn(3, 5, 64) * 4 + 2
    y = model.norm(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(3, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(3, 5), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("overrides", "fragment"), [
    (dict(d_model=100, n_heads=3), "d_model=100 is not divisible by model.n_heads=3"),
    (dict(n_heads=6, n_kv_heads=4, d_model=96), "n_heads=6 is not divisible by model.n_kv_heads=4"),
    (dict(norm="batchnorm"), "model.norm='batchnorm' is not one of rmsnorm, layernorm"),
    (dict(mlp="geglu"), "model.mlp='geglu' is not one of swiglu, gelu, relu"),
    (dict(block="postnorm"), "reordered, prenorm"),
    (dict(n_layers=0), "model.n_layers must be positive"),
])
def test_bad_configs_fail_with_a_message_naming_the_value(overrides: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        ModelConfig(**{**SMALL, **overrides})
    assert fragment in str(error.value)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        preset("olmo2-2b")
    message = str(error.value)
    assert "'olmo2-2b'" in message
    assert all(name in message for name in PRESETS)


def test_flops_per_token_matches_a_hand_count() -> None:
    cfg = ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
    seq_len = 32
    # Matmul weights per layer: q (64x64), k and v (64x32 each), out (64x64), gate+up (64x256), down (128x64).
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 64 * 256 + 128 * 64
    head = 256 * 64  # the vocabulary padded to 256 rows
    matmul_params = 2 * per_layer + head
    attention = 12 * 2 * 64 * seq_len  # 12 * layers * width * context (PaLM, appendix B)
    assert flops_per_token(cfg, seq_len) == 6 * matmul_params + attention
    # Tying the head to the embedding does not remove the output matmul.
    assert flops_per_token(cfg.replace(tie_embeddings=True), seq_len) == 6 * matmul_params + attention
