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


def test_fused_adamw_takes_the_same_steps_as_the_foreach_one():
    """`optim.fused` picks torch's fused kernel (for GPUs); it must train the same, weight decay groups included."""
    torch.manual_seed(0)
    models = [_model(), _model()]
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    opts = [build_adamw(m, OptimConfig(fused=fused)) for m, fused in zip(models, (False, True), strict=True)]
    assert [o.defaults["fused"] for o in opts] == [None, True] and opts[0].defaults["foreach"] is True
    ids = torch.randint(0, 64, (2, 8))
    for _ in range(3):
        for model, opt in zip(models, opts, strict=True):
            opt.zero_grad()
            model(ids).logsumexp(-1).mean().backward()
            opt.step()
    for a, b, a0 in zip(models[0].parameters(), models[1].parameters(), start, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert not torch.equal(a, a0)  # every parameter moved
