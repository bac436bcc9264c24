"""Hugging Face Olmo2 interop: logits parity with transformers, export -> import round trip, clear refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import kiln
from kiln.checkpoint import load_model_dir, save_model_dir
from kiln.cli import main
from kiln.errors import KilnError
from kiln.hf.convert import config_from_hf, config_to_hf, export_hf, import_hf

from .hf_tiny import random_model, tiny_config, tiny_tokenizer

transformers = pytest.importorskip("transformers")

PARITY_CONFIGS = {
    "mha-untied": dict(),
    "gqa-tied": dict(n_kv_heads=2, tie_embeddings=True),
    "mqa-untied-odd-vocab": dict(n_kv_heads=1, vocab_size=130, n_layers=3, rope_theta=500_000.0),
    "gqa-nonaffine-norms": dict(n_kv_heads=2, norm_affine=False, norm_eps=1e-5),
    # export folds muP's logit and attention multipliers into the weights (untying, and adding norm gains to hold them)
    "mup-untied": dict(parametrization="mup", mup_base_d_model=16),
    "mup-gqa-tied-nonaffine": dict(n_kv_heads=2, tie_embeddings=True, norm_affine=False, parametrization="mup",
                                   mup_base_d_model=24, mup_output_mult=2.0),
}


@pytest.mark.parametrize("overrides", PARITY_CONFIGS.values(), ids=PARITY_CONFIGS.keys())
def test_logits_match_transformers_olmo2(tmp_path, overrides):
    model = random_model(tiny_config(**overrides))
    save_model_dir(model, tmp_path / "kiln")
    export_hf(tmp_path / "kiln", tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf_model).__name__ == "Olmo2ForCausalLM"
    ids = torch.randint(0, model.cfg.vocab_size, (3, 23))
    with torch.no_grad():
        expected = hf_model(ids).logits
        got = model(ids)
    assert got.shape == expected.shape == (3, 23, model.cfg.padded_vocab_size)
    assert (got - expected).abs().max().item() < 1e-4


def test_from_pretrained_loads_a_transformers_saved_olmo2(tmp_path):
    hf_config = transformers.Olmo2Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-6, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 123_456.0},
    )
    torch.manual_seed(1)
    hf_model = transformers.Olmo2ForCausalLM(hf_config).eval()
    with torch.no_grad():
        for param in hf_model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    hf_model.save_pretrained(tmp_path)
    model = kiln.from_pretrained(tmp_path)
    assert model.cfg.n_kv_heads == 2 and model.cfg.rope_theta == 123_456.0
    ids = torch.randint(0, 256, (2, 17))
    with torch.no_grad():
        assert (model(ids) - hf_model(ids).logits).abs().max().item() < 1e-4


def _exported(tmp_path, tokenizer=None, **overrides):
    """A random tiny model saved under tmp_path/kiln and exported to tmp_path/hf."""
    model = random_model(tiny_config(**overrides))
    save_model_dir(model, tmp_path / "kiln", tokenizer)
    export_hf(tmp_path / "kiln", tmp_path / "hf")
    return model


def _assert_same_model(got, expected):
    """Same tensors under the same names and bit-equal logits."""
    assert got.state_dict().keys() == expected.state_dict().keys()
    for name, tensor in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], tensor), name
    ids = torch.randint(0, expected.cfg.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(got(ids), expected(ids), rtol=0, atol=0)


# Each holds a field that Olmo2's config.json cannot say (norm_affine, init, n_kv_heads=None) or a layout to keep.
ROUND_TRIP_CONFIGS = {
    "gqa": dict(n_kv_heads=2),
    "gqa-tied": dict(n_kv_heads=2, tie_embeddings=True),
    "mha-kv-heads-none": dict(),
    "mha-tied": dict(tie_embeddings=True),
    "nonaffine-norms": dict(norm_affine=False, norm_eps=1e-5),
    "mitchell-init": dict(init="mitchell", n_kv_heads=1),
}


@pytest.mark.parametrize("overrides", ROUND_TRIP_CONFIGS.values(), ids=ROUND_TRIP_CONFIGS.keys())
def test_export_import_round_trip_is_exact(tmp_path, overrides):
    model = random_model(tiny_config(**overrides))
    save_model_dir(model, tmp_path / "kiln", tiny_tokenizer())
    assert main(["export", "hf", str(tmp_path / "kiln"), str(tmp_path / "hf")]) == 0
    assert main(["import", "hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    for back in (load_model_dir(tmp_path / "back"), kiln.from_pretrained(tmp_path / "hf")):
        assert back.cfg == model.cfg
        _assert_same_model(back, model)
    assert (tmp_path / "back" / "tokenizer.json").read_text() == (tmp_path / "kiln" / "tokenizer.json").read_text()


def test_import_without_kiln_config_derives_the_config_from_config_json(tmp_path):
    """A hub model has no kiln_config.json: Olmo2's defaults (affine norms, normal init, n_kv_heads) fill in."""
    model = _exported(tmp_path, norm_affine=False, init="mitchell")
    (tmp_path / "hf" / "kiln_config.json").unlink()
    back = load_model_dir(import_hf(tmp_path / "hf", tmp_path / "back"))
    assert back.cfg == model.cfg.replace(norm_affine=True, init="normal", n_kv_heads=4)
    assert torch.equal(back.blocks[0].attn.q_norm.weight, torch.ones(64))
    ids = torch.randint(0, 200, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(back(ids), model(ids))


@pytest.mark.parametrize("file, key, value, named", [
    ("kiln_config.json", "d_model", 96, "d_model=96"),
    ("kiln_config.json", "rope_theta", 123_456.0, "rope_theta=123456.0"),
    ("kiln_config.json", "n_kv_heads", 2, "n_kv_heads=2"),
    ("kiln_config.json", "vocab_size", 150, "vocab_size=150"),
    ("kiln_config.json", "tie_embeddings", True, "tie_embeddings=True"),
    ("config.json", "rms_norm_eps", 1e-3, "norm_eps=1e-06"),
    ("config.json", "num_hidden_layers", 3, "n_layers=2"),
])
def test_import_refuses_kiln_config_that_disagrees_with_config_json(tmp_path, file, key, value, named):
    _exported(tmp_path)
    path = tmp_path / "hf" / file
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    with pytest.raises(KilnError, match="disagree") as info:
        import_hf(tmp_path / "hf", tmp_path / "back")
    assert named in str(info.value)
    with pytest.raises(KilnError, match=named.split("=")[0]):
        kiln.from_pretrained(tmp_path / "hf")
    assert not (tmp_path / "back").exists()


def test_import_refuses_norm_weights_that_a_nonaffine_model_cannot_hold(tmp_path):
    _exported(tmp_path, norm_affine=False)
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    weights["model.layers.1.self_attn.k_norm.weight"][3] = 1.5
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(KilnError, match=r"model\.layers\.1\.self_attn\.k_norm\.weight is not all ones"):
        import_hf(tmp_path / "hf", tmp_path / "back")


def test_export_writes_tokenizer_files_and_special_ids(tmp_path):
    _exported(tmp_path, tiny_tokenizer())
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Olmo2ForCausalLM"] and config["vocab_size"] == 256
    assert (config["eos_token_id"], config["pad_token_id"]) == (0, 1)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf_tokenizer("hello fox")["input_ids"] == [2, 7]
    assert hf_tokenizer.eos_token == "<|endoftext|>"


def test_no_tokenizer_no_tokenizer_files(tmp_path):
    _exported(tmp_path)
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    assert not (tmp_path / "hf" / "tokenizer_config.json").exists()


@pytest.mark.parametrize("overrides, named", [
    (dict(block="prenorm"), "block='prenorm'"),
    (dict(norm="layernorm"), "norm='layernorm'"),
    (dict(clip_qkv=8.0), "clip_qkv=8.0"),
    (dict(qk_norm="per_head"), "qk_norm='per_head'"),
    (dict(qk_norm="none"), "qk_norm='none'"),
    (dict(mlp="gelu"), "mlp='gelu'"),
    (dict(bias=True), "bias=True"),
])
def test_export_refuses_what_olmo2_cannot_express(overrides, named):
    with pytest.raises(KilnError, match="unsupported options") as info:
        config_to_hf(tiny_config(**overrides))
    assert named in str(info.value)


def test_export_refusal_names_every_option_and_cli_exits_2(tmp_path, capsys):
    cfg = tiny_config(block="prenorm", norm="layernorm", norm_affine=False, clip_qkv=8.0, qk_norm="none")
    save_model_dir(random_model(cfg), tmp_path / "kiln")
    assert main(["export", "hf", str(tmp_path / "kiln"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    for named in ("block='prenorm'", "norm='layernorm'", "clip_qkv=8.0", "qk_norm='none'"):
        assert named in err
    assert not (tmp_path / "hf" / "config.json").exists()


def _olmo2_hf_config(**changes):
    base = dict(model_type="olmo2", vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-6, max_position_embeddings=64,
                rope_parameters={"rope_type": "default", "rope_theta": 10_000.0})
    return {**base, **changes}


@pytest.mark.parametrize("changes, named", [
    (dict(attention_bias=True), "attention_bias"),
    (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), "rope_type='linear'"),
    (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling"),
    (dict(model_type="llama"), "model_type='llama'"),
    (dict(hidden_act="gelu"), "hidden_act='gelu'"),
    (dict(head_dim=32), "head_dim=32"),
])
def test_import_refuses_unsupported_hf_configs(changes, named):
    with pytest.raises(KilnError, match="unsupported") as info:
        config_from_hf(_olmo2_hf_config(**changes))
    assert named in str(info.value)


def test_import_reads_transformers_4_style_rope_theta():
    hf = _olmo2_hf_config(rope_theta=500_000.0, rope_scaling=None)
    del hf["rope_parameters"]
    assert config_from_hf(hf).rope_theta == 500_000.0


def test_import_lists_missing_and_unexpected_hf_tensors(tmp_path):
    _exported(tmp_path)
    weights = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del weights["model.layers.1.self_attn.k_norm.weight"]
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    weights["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 95)
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(KilnError) as info:
        import_hf(tmp_path / "hf", tmp_path / "back")
    message = str(info.value)
    assert "model.layers.1.self_attn.k_norm.weight" in message and "q_proj.bias" in message
    del weights["model.layers.0.self_attn.q_proj.bias"]
    weights["model.layers.1.self_attn.k_norm.weight"] = torch.ones(64)
    save_file(weights, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(KilnError, match=r"misshapen \(1\): blocks\.0\.mlp\.down\.weight: expected \(64, 96\)"):
        import_hf(tmp_path / "hf", tmp_path / "back")
