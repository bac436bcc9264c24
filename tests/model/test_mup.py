"""muP: identical to standard at the base width, the per-class rules at other widths, and folding for export."""

from __future__ import annotations

import math

import pytest
import torch

from kiln.model import ModelConfig, Transformer
from kiln.model.config import ConfigError
from kiln.model.mup import to_standard
from kiln.optim.adamw import OptimConfig, build_adamw

VARIANTS = {
    "untied-qknorm-full": dict(),
    "tied-gqa": dict(tie_embeddings=True, n_kv_heads=2),
    "qknorm-per-head-mitchell": dict(qk_norm="per_head", init="mitchell"),
    "prenorm-no-qknorm-biases": dict(block="prenorm", qk_norm="none", bias=True, norm="layernorm", norm_bias=True),
}


def build(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=300, d_model=64, n_layers=2, n_heads=4, d_ff=128, max_seq_len=64)
    return Transformer(ModelConfig(**{**cfg, **overrides}))


def one_step(model: Transformer, tokens: torch.Tensor) -> None:
    optimizer = build_adamw(model, OptimConfig(lr=1e-2, weight_decay=0.1))
    logits = model(tokens[:, :-1])
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
    optimizer.step()


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_mup_at_its_base_width_is_the_standard_model(overrides):
    """Same initial weights, same logits, same first AdamW update (weight decay included), bit for bit."""
    standard = build(**overrides)
    mup = build(**overrides, parametrization="mup", mup_base_d_model=64)
    tokens = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(1))
    for a, b in zip(standard.state_dict().values(), mup.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(standard(tokens), mup(tokens))
    one_step(standard, tokens)
    one_step(mup, tokens)
    for (name, a), b in zip(standard.state_dict().items(), mup.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_mup_init_scales_hidden_matrices_by_one_over_sqrt_m():
    """Width 256 from base 64 (m = 4): hidden stds are the base width's / 2, embedding and head keep the base's."""
    for init, base_hidden, base_embed in (("normal", 0.02, 0.02), ("mitchell", 1 / 8, 1 / 8)):
        model = build(d_model=256, d_ff=512, vocab_size=2000, init=init, parametrization="mup", mup_base_d_model=64)
        params = dict(model.named_parameters())
        std = {name: params[name].detach().double().std().item() / 0.986 for name in params}  # truncation at 3 std
        assert std["blocks.0.attn.qkv.weight"] == pytest.approx(base_hidden / 2, rel=0.03)
        assert std["blocks.0.mlp.up.weight"] == pytest.approx(base_hidden / 2, rel=0.03)
        assert std["embed.weight"] == pytest.approx(base_embed, rel=0.03)
        assert std["head.weight"] == pytest.approx(base_embed, rel=0.03)
        if init == "normal":  # mitchell's out/down stds also shrink with depth; normal's do not
            assert std["blocks.1.attn.out.weight"] == pytest.approx(0.01, rel=0.03)
            assert std["blocks.1.mlp.down.weight"] == pytest.approx(0.01, rel=0.03)


def test_mup_optimizer_gives_hidden_matrices_lr_over_m_and_keeps_lr_times_wd():
    model = build(d_model=192, d_ff=384, parametrization="mup", mup_base_d_model=64, bias=True)
    optimizer = build_adamw(model, OptimConfig(lr=3e-3, weight_decay=0.1))
    groups = {tuple(g["names"]): g for g in optimizer.param_groups}
    hidden = [g for g in groups.values() if g["lr"] != 3e-3]
    assert len(hidden) == 1
    expected = {f"blocks.{i}.{name}" for i in range(2)
                for name in ("attn.qkv.weight", "attn.out.weight", "mlp.up.weight", "mlp.down.weight")}
    assert set(hidden[0]["names"]) == expected
    assert hidden[0]["lr"] == pytest.approx(1e-3) and hidden[0]["weight_decay"] == pytest.approx(0.3)
    assert hidden[0]["lr"] * hidden[0]["weight_decay"] == pytest.approx(3e-3 * 0.1)
    names = [n for g in optimizer.param_groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter in exactly one group
    others = [g for g in optimizer.param_groups if g is not hidden[0]]
    assert all(g["lr"] == 3e-3 for g in others)
    assert "blocks.0.attn.qkv.bias" in [n for g in others for n in g["names"]]  # biases keep the base LR


def test_mup_multipliers_by_hand():
    cfg = ModelConfig(vocab_size=300, d_model=256, n_heads=4, d_ff=512, parametrization="mup", mup_base_d_model=64,
                      mup_output_mult=2.0)
    assert cfg.width_mult == 4
    assert cfg.attention_scale == pytest.approx(math.sqrt(64 / 4) / 64)  # sqrt(D_base) / D, D = 64, D_base = 16
    assert cfg.output_mult == pytest.approx(0.5)
    standard = cfg.replace(parametrization="standard")
    assert standard.width_mult == 1 and standard.output_mult == 1 and standard.attention_scale == 1 / 8


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_to_standard_computes_the_same_logits(overrides):
    """m = 3 (not a power of two, so folding is not exact in floating point) and an output multiplier of 1.5."""
    mup = build(**{**overrides, "d_model": 96, "d_ff": 192}, parametrization="mup", mup_base_d_model=32,
                mup_output_mult=1.5)
    with torch.no_grad():
        for param in mup.parameters():  # random norm gains too, so the folded q-norm gain is checked
            param.add_(torch.randn_like(param) * 0.05)
    cfg, state = to_standard(mup.cfg, mup.state_dict())
    assert cfg.parametrization == "standard" and not cfg.tie_embeddings
    standard = Transformer(cfg)
    standard.load_state_dict(state)
    tokens = torch.randint(0, 300, (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(standard(tokens), mup(tokens), rtol=1e-5, atol=1e-5)
    head = mup.head.weight if mup.head is not None else mup.embed.weight
    torch.testing.assert_close(state["head.weight"], head.detach() * 1.5 / 3)


def test_to_standard_refuses_a_clamp_it_cannot_fold_past():
    cfg = ModelConfig(vocab_size=300, d_model=96, n_heads=4, d_ff=192, qk_norm="none", clip_qkv=8.0,
                      parametrization="mup", mup_base_d_model=32)
    with pytest.raises(Exception, match="clip_qkv"):
        to_standard(cfg, Transformer(cfg).state_dict())


@pytest.mark.parametrize("fields, named", [
    (dict(parametrization="mup"), "mup_base_d_model"),
    (dict(parametrization="mup", mup_base_d_model=0), "mup_base_d_model must be positive"),
    (dict(parametrization="mup", mup_base_d_model=32, mup_output_mult=-1.0), "mup_output_mult"),
    (dict(parametrization="mu-p"), "parametrization"),
])
def test_bad_mup_settings_name_the_field(fields, named):
    with pytest.raises(ConfigError, match=named):
        ModelConfig(vocab_size=300, d_model=64, n_heads=4, d_ff=128, **fields)


def test_the_run_header_states_the_multipliers():
    from kiln.train.run import mup_summary

    cfg = ModelConfig(vocab_size=300, d_model=128, n_heads=4, d_ff=256, parametrization="mup", mup_base_d_model=32)
    line = mup_summary(cfg, 3e-3)
    for part in ("width 128 = 4 x base 32", "init std / 2,", "LR 0.00075 (peak 0.003 / 4)", "logits x 0.25",
                 f"attention scale {math.sqrt(8) / 32:.3g}"):
        assert part in line, (part, line)
