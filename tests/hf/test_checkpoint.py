"""The kiln model directory: save/load, run folders, strict loading and forward compatibility."""

from __future__ import annotations

import json

import pytest
import torch

import kiln
from kiln.checkpoint import (
    load_checkpoint_tokenizer,
    load_model_dir,
    load_state_strict,
    resolve_model_dir,
    save_model_dir,
    special_token_id,
)
from kiln.errors import KilnError
from kiln.model.transformer import Transformer

from .hf_tiny import random_model, tiny_config, tiny_tokenizer


def test_save_load_round_trip_is_exact(tmp_path):
    model = random_model(tiny_config(n_kv_heads=2))
    save_model_dir(model, tmp_path / "ckpt", tiny_tokenizer())
    loaded = load_model_dir(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(0, 200, (2, 9))
    torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert load_checkpoint_tokenizer(tmp_path / "ckpt").encode("hello fox").ids == [2, 7]


def test_bf16_weights_and_dtype_override(tmp_path):
    model = random_model(tiny_config(tie_embeddings=True)).to(torch.bfloat16)
    save_model_dir(model, tmp_path)
    assert load_model_dir(tmp_path).embed.weight.dtype == torch.bfloat16
    assert load_model_dir(tmp_path, dtype=torch.float32).embed.weight.dtype == torch.float32


def test_run_folder_resolves_to_highest_step_with_weights(tmp_path):
    model = random_model(tiny_config())
    for step in ("step9", "step10"):
        save_model_dir(model, tmp_path / step)
    (tmp_path / "step20").mkdir()  # a step still being written: no weights yet
    (tmp_path / "step20" / "model.json").write_text("{}")
    save_model_dir(model, tmp_path / "stepx")
    assert resolve_model_dir(tmp_path) == tmp_path / "step10"
    assert kiln.from_pretrained(tmp_path).cfg == model.cfg


def test_not_a_checkpoint_names_what_is_expected(tmp_path):
    with pytest.raises(KilnError, match="model.json"):
        resolve_model_dir(tmp_path)
    with pytest.raises(KilnError, match="does not exist"):
        resolve_model_dir(tmp_path / "nope")


def test_unknown_top_level_keys_and_files_are_ignored(tmp_path):
    model = random_model(tiny_config())
    save_model_dir(model, tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["trainer"] = {"step": 5}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    (tmp_path / "train_state.json").write_text("{}")
    (tmp_path / "dcp").mkdir()
    assert load_model_dir(tmp_path).cfg == model.cfg


def test_newer_format_version_is_refused(tmp_path):
    save_model_dir(random_model(tiny_config()), tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(KilnError, match="format_version 99"):
        load_model_dir(tmp_path)


def test_strict_load_lists_missing_unexpected_and_misshapen():
    model = Transformer(tiny_config())
    state = dict(model.state_dict())
    del state["blocks.1.attn.out.weight"]
    del state["norm.weight"]
    state["blocks.0.attn.bias"] = torch.zeros(3)
    state["blocks.0.mlp.down.weight"] = torch.zeros(64, 95)
    with pytest.raises(KilnError) as info:
        load_state_strict(model, state)
    message = str(info.value)
    for name in ("blocks.1.attn.out.weight", "norm.weight", "blocks.0.attn.bias",
                 "blocks.0.mlp.down.weight: expected (64, 96), got (64, 95)"):
        assert name in message
    assert "missing (2)" in message and "unexpected (1)" in message and "misshapen (1)" in message


def test_loading_weights_of_another_config_fails_with_a_listing(tmp_path):
    save_model_dir(random_model(tiny_config()), tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    meta["model"]["n_layers"] = 3
    meta["model"]["d_ff"] = 128
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(KilnError, match=r"missing \(\d+\): blocks\.2\..*misshapen"):
        load_model_dir(tmp_path)


def test_special_token_ids():
    tokenizer = tiny_tokenizer()
    assert special_token_id(tokenizer, "eos") == 0
    assert special_token_id(tokenizer, "pad") == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own imports when compile first loads
def test_saving_a_compiled_model_writes_plain_names(tmp_path):
    model = random_model(tiny_config())
    save_model_dir(torch.compile(model), tmp_path)  # state_dict only: nothing is compiled
    loaded = load_model_dir(tmp_path)
    assert torch.equal(loaded.embed.weight, model.embed.weight)
