import torch

from kiln.model import ModelConfig, Transformer
from kiln.optim.adamw import OptimConfig, build_adamw, param_groups


def _names(groups, decayed: bool) -> set[str]:
    return {n for g in groups if (g["weight_decay"] > 0) == decayed for n in g["names"]}


def _model(**kw) -> Transformer:
    return Transformer(ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32, **kw))


def test_olmo2_default_decays_everything_but_the_embeddings():
    """OLMo 2's configs: decay_embeddings false, decay_norm_and_bias true, so norms (QK-norm too) are decayed."""
    model = _model(bias=True)
    groups = param_groups(model, OptimConfig())
    assert _names(groups, False) == {"embed.weight"}
    assert _names(groups, True) == {n for n, _ in model.named_parameters()} - {"embed.weight"}


def test_tied_embeddings_are_not_decayed():
    groups = param_groups(_model(tie_embeddings=True), OptimConfig())
    assert _names(groups, False) == {"embed.weight"}


def test_switches_move_embeddings_norms_and_biases():
    model = _model(bias=True)
    groups = param_groups(model, OptimConfig(decay_embeddings=True, decay_norms=True, decay_biases=True))
    assert _names(groups, False) == set()
    groups = param_groups(model, OptimConfig(decay_norms=False, decay_biases=False))
    plain = _names(groups, False)
    assert {"embed.weight", "blocks.0.mlp.up.bias", "norm.weight", "blocks.1.attn.q_norm.weight"} <= plain
    assert "blocks.0.attn.qkv.weight" not in plain


def test_adamw_hyperparameters_reach_the_optimizer():
    opt = build_adamw(_model(), OptimConfig(lr=1e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["betas"] for g in opt.param_groups} == {(0.8, 0.9)}
    assert {g["eps"] for g in opt.param_groups} == {1e-7}
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
