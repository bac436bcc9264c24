import torch

from kiln.model import ModelConfig, Transformer
from kiln.optim.adamw import OptimConfig, build_adamw, param_groups


def _names(groups, decayed: bool) -> set[str]:
    return {n for g in groups if (g["weight_decay"] > 0) == decayed for n in g["names"]}


def _model(**kw) -> Transformer:
    return Transformer(ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32, **kw))


def test_olmo2_default_no_decay_on_embeddings_and_norms():
    model = _model()
    groups = param_groups(model, OptimConfig())
    decayed, plain = _names(groups, True), _names(groups, False)
    assert "embed.weight" in plain
    assert "head.weight" in decayed
    assert "blocks.0.attn.qkv.weight" in decayed
    assert {"norm.weight", "blocks.0.attn_norm.weight", "blocks.1.attn.q_norm.weight"} <= plain
    assert decayed | plain == {n for n, _ in model.named_parameters()}
    assert not decayed & plain


def test_switches_move_embeddings_norms_and_biases():
    model = _model(bias=True)
    groups = param_groups(model, OptimConfig(decay_embeddings=True, decay_norms=True, decay_biases=True))
    assert _names(groups, False) == set()
    groups = param_groups(model, OptimConfig())
    assert "blocks.0.mlp.up.bias" in _names(groups, False)


def test_adamw_hyperparameters_reach_the_optimizer():
    opt = build_adamw(_model(), OptimConfig(lr=1e-3, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.05))
    assert isinstance(opt, torch.optim.AdamW)
    assert {g["betas"] for g in opt.param_groups} == {(0.8, 0.9)}
    assert {g["eps"] for g in opt.param_groups} == {1e-7}
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
