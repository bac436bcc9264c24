"""Kiln <-> Hugging Face Olmo2: config and weight mapping both ways, and the directory-level export/import.

Olmo2 is OLMo 2's architecture in transformers: reordered RMSNorm blocks (norm on each sub-layer's output),
QK-norm over the whole q and k projections, SwiGLU, no biases. Kiln fuses q/k/v and gate/up into one matmul
each; Hugging Face keeps them apart, so the mapping splits and concatenates along dim 0. transformers itself
is not needed to convert: only JSON and safetensors are read and written.

Export also writes kiln's own config as kiln_config.json, because Olmo2's config.json cannot say what kiln
needs for an exact round trip (norm_affine, init, n_kv_heads=None); import prefers it once it agrees with
config.json. A directory without it (a model from the hub) is imported from config.json alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from kiln.checkpoint import (
    TOKENIZER_FILE,
    build_with_state,
    load_checkpoint_tokenizer,
    load_model_dir,
    resolve_model_dir,
    save_model_dir,
    save_weights,
    special_token_id,
)
from kiln.errors import KilnError
from kiln.model.config import VOCAB_MULTIPLE, ModelConfig
from kiln.model.mup import to_standard
from kiln.model.transformer import Transformer

HF_CONFIG_FILE = "config.json"
HF_WEIGHTS_FILE = "model.safetensors"
HF_INDEX_FILE = "model.safetensors.index.json"
KILN_CONFIG_FILE = "kiln_config.json"
# ModelConfig fields that config.json does not carry (n_kv_heads is compared as kv_heads instead).
_KILN_ONLY_FIELDS = ("n_kv_heads", "norm_affine", "norm_bias", "init")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def olmo2_incompatibilities(cfg: ModelConfig) -> list[str]:
    """The options of `cfg` that Olmo2 cannot express, each named with its value and what Olmo2 needs."""
    checks = [
        (cfg.block == "reordered", f"block={cfg.block!r} (Olmo2 needs 'reordered'; pre-norm is not Olmo2)"),
        (cfg.norm == "rmsnorm", f"norm={cfg.norm!r} (Olmo2 needs 'rmsnorm'; LayerNorm is not Olmo2)"),
        (cfg.qk_norm == "full", f"qk_norm={cfg.qk_norm!r} (Olmo2 needs 'full', one norm over all heads)"),
        (cfg.clip_qkv is None, f"clip_qkv={cfg.clip_qkv!r} (Olmo2 has no q/k/v clipping; needs null)"),
        (cfg.mlp == "swiglu", f"mlp={cfg.mlp!r} (Olmo2 needs 'swiglu')"),
        (not cfg.bias, f"bias={cfg.bias!r} (Olmo2's MLP has no biases; needs false)"),
    ]
    return [message for ok, message in checks if not ok]


def config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32, eos_id: int | None = None,
                 pad_id: int | None = None) -> dict[str, Any]:
    """The config.json of an Olmo2ForCausalLM equal to a kiln model; refuses configs Olmo2 cannot express."""
    problems = olmo2_incompatibilities(cfg)
    if problems:
        raise KilnError("cannot export to Hugging Face Olmo2; unsupported options: " + "; ".join(problems))
    return {
        "architectures": ["Olmo2ForCausalLM"],
        "model_type": "olmo2",
        "vocab_size": cfg.padded_vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        # transformers >= 5 reads rope_parameters; 4.x reads the top-level rope_theta.
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "use_cache": True,
        "dtype": _DTYPE_NAMES.get(dtype, "float32"),
        # Olmo2 knows only the padded vocabulary; this keeps the real one for a lossless import back.
        "kiln_vocab_size": cfg.vocab_size,
    }


def config_from_hf(hf: dict[str, Any], tokenizer_vocab: int | None = None) -> ModelConfig:
    """The kiln config of an Olmo2 config.json, refusing what kiln's Olmo2 layout cannot hold.

    The kiln vocab_size (ids past it are masked in generation) is, in order: `kiln_vocab_size` written by
    export, the tokenizer's size when it pads to the Hugging Face vocab_size, the Hugging Face vocab_size.
    """
    problems = _hf_incompatibilities(hf)
    if problems:
        raise KilnError("cannot import this Hugging Face model; unsupported: " + "; ".join(problems))
    hf_vocab = hf["vocab_size"]
    vocab = hf_vocab
    for candidate in (hf.get("kiln_vocab_size"), tokenizer_vocab):
        if isinstance(candidate, int) and 0 < candidate <= hf_vocab and _pad_vocab(candidate) == _pad_vocab(hf_vocab):
            vocab = candidate
            break
    rope = hf.get("rope_parameters") or {}
    return ModelConfig(
        vocab_size=vocab, d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
        n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        d_ff=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-5), block="reordered", qk_norm="full",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))), mlp="swiglu", bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), init_std=hf.get("initializer_range", 0.02),
    )


def _pad_vocab(vocab: int) -> int:
    return math.ceil(vocab / VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def _hf_incompatibilities(hf: dict[str, Any]) -> list[str]:
    problems = []
    if hf.get("model_type") != "olmo2":
        problems.append(f"model_type={hf.get('model_type')!r} (kiln imports 'olmo2')")
    if hf.get("attention_bias"):
        problems.append("attention_bias=true (kiln's Olmo2 layout has no attention biases)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf['hidden_act']!r} (kiln's SwiGLU needs 'silu')")
    rope = hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope_parameters.rope_type={rope_type!r} (kiln has plain RoPE, 'default')")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor={rope['partial_rotary_factor']} (kiln rotates all of each head)")
    if hf.get("rope_scaling"):
        problems.append(f"rope_scaling={hf['rope_scaling']!r} (kiln has no RoPE scaling)")
    heads, width = hf.get("num_attention_heads"), hf.get("hidden_size")
    if hf.get("head_dim") not in (None, width // heads if heads and width else None):
        problems.append(f"head_dim={hf['head_dim']} (kiln needs hidden_size / num_attention_heads)")
    missing = [key for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if key not in hf]
    if missing:
        problems.append(f"config.json lacks {', '.join(missing)}")
    return problems


def state_to_hf(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Kiln tensor names -> Olmo2ForCausalLM names, splitting the fused qkv and gate/up projections.

    Non-affine RMSNorms (no weight tensor) are written as weights of ones, which Olmo2 computes identically.
    """
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    ones = {"q": q_dim, "k": kv_dim, "d": cfg.d_model}

    def norm(name: str, dim: str) -> torch.Tensor:
        if name in state:
            return state[name]
        return torch.ones(ones[dim], dtype=state["embed.weight"].dtype)

    hf = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": norm("norm.weight", "d")}
    if not cfg.tie_embeddings:
        hf["lm_head.weight"] = state["head.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[src + "attn.qkv.weight"].split((q_dim, kv_dim, kv_dim), dim=0)
        gate, up = state[src + "mlp.up.weight"].chunk(2, dim=0)
        hf.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k,
            dst + "self_attn.v_proj.weight": v, dst + "self_attn.o_proj.weight": state[src + "attn.out.weight"],
            dst + "self_attn.q_norm.weight": norm(src + "attn.q_norm.weight", "q"),
            dst + "self_attn.k_norm.weight": norm(src + "attn.k_norm.weight", "k"),
            dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "mlp.down.weight"],
            dst + "post_attention_layernorm.weight": norm(src + "attn_norm.weight", "d"),
            dst + "post_feedforward_layernorm.weight": norm(src + "mlp_norm.weight", "d"),
        })
    return {name: t.contiguous() for name, t in hf.items()}


def _hf_names(cfg: ModelConfig) -> dict[str, list[str]]:
    """Each kiln tensor -> the Olmo2 tensors concatenated into it, norm weights included even when non-affine."""
    mapping = {"embed.weight": ["model.embed_tokens.weight"], "norm.weight": ["model.norm.weight"]}
    if not cfg.tie_embeddings:
        mapping["head.weight"] = ["lm_head.weight"]
    for i in range(cfg.n_layers):
        src, dst = f"model.layers.{i}.", f"blocks.{i}."
        attn, mlp = src + "self_attn.", src + "mlp."
        mapping.update({
            dst + "attn.qkv.weight": [attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"],
            dst + "attn.out.weight": [attn + "o_proj.weight"],
            dst + "attn.q_norm.weight": [attn + "q_norm.weight"],
            dst + "attn.k_norm.weight": [attn + "k_norm.weight"],
            dst + "mlp.up.weight": [mlp + "gate_proj.weight", mlp + "up_proj.weight"],
            dst + "mlp.down.weight": [mlp + "down_proj.weight"],
            dst + "attn_norm.weight": [src + "post_attention_layernorm.weight"],
            dst + "mlp_norm.weight": [src + "post_feedforward_layernorm.weight"],
        })
    return mapping


def state_from_hf(cfg: ModelConfig, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Olmo2ForCausalLM names -> kiln names, fusing projections; lists every missing or unexpected HF tensor.

    Embedding rows are zero-padded up to kiln's padded vocabulary; shapes are checked when the state is loaded.
    """
    mapping = _hf_names(cfg)
    if not cfg.norm_affine:
        norms = [mapping.pop(name)[0] for name in list(mapping) if name.endswith("norm.weight")]
        hf = _drop_unit_norms(hf, norms)
    used = {name for names in mapping.values() for name in names}
    # A tied checkpoint may still carry lm_head (a copy of the embedding); old ones carry RoPE buffers.
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    missing = sorted(used - hf.keys())
    unexpected = sorted(n for n in hf.keys() - used if n not in ignorable and not n.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        parts = [f"{label} ({len(names)}): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected)) if names]
        raise KilnError("Hugging Face weights do not match config.json; " + "; ".join(parts))
    state = {name: torch.cat([hf[n] for n in names], dim=0) for name, names in mapping.items()}
    for name in ("embed.weight", "head.weight"):
        if name in state and state[name].shape[0] < cfg.padded_vocab_size:
            extra = cfg.padded_vocab_size - state[name].shape[0]
            state[name] = torch.cat([state[name], state[name].new_zeros(extra, state[name].shape[1])])
    return state


def _drop_unit_norms(hf: dict[str, torch.Tensor], norms: list[str]) -> dict[str, torch.Tensor]:
    """`hf` without the norm weights `norms`, which must be the ones export writes for a non-affine model."""
    for name in norms:
        if name in hf and not torch.all(hf[name] == 1):
            raise KilnError(
                f"Hugging Face tensor {name} is not all ones, but the kiln config has norm_affine=false (no norm "
                f"weights); set norm_affine to true in {KILN_CONFIG_FILE}, or delete it to import from config.json"
            )
    return {name: tensor for name, tensor in hf.items() if name not in norms}


def export_hf(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write a kiln checkpoint as a Hugging Face Olmo2 directory (configs, weights, tokenizer when present).

    A muP model is written as the standard model that computes the same logits (kiln.model.mup.to_standard).
    """
    model_dir = resolve_model_dir(checkpoint)
    model = load_model_dir(model_dir)
    tokenizer = load_checkpoint_tokenizer(model_dir)
    eos_id = special_token_id(tokenizer, "eos") if tokenizer else None
    pad_id = special_token_id(tokenizer, "pad") if tokenizer else None
    cfg, state = to_standard(model.cfg, model.state_dict())  # muP's multipliers folded into the weights
    hf_config = config_to_hf(cfg, state["embed.weight"].dtype, eos_id, pad_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state_to_hf(cfg, state), out / HF_WEIGHTS_FILE)
    (out / HF_CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
    (out / KILN_CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if tokenizer is not None:
        shutil.copyfile(model_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
        (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(tokenizer, cfg), indent=2))
    return out


def _tokenizer_config(tokenizer, cfg: ModelConfig) -> dict[str, Any]:
    """The minimal tokenizer_config.json that lets transformers' AutoTokenizer wrap tokenizer.json."""
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len}
    for kind in ("eos", "pad"):
        token_id = special_token_id(tokenizer, kind)
        if token_id is not None:
            config[f"{kind}_token"] = tokenizer.id_to_token(token_id)
    return config


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    path = Path(hf_dir) / HF_CONFIG_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise KilnError(f"cannot read a Hugging Face config at {path}: {err}") from err


def read_model_config_hf(hf_dir: str | Path, tokenizer_vocab: int | None = None) -> ModelConfig:
    """The kiln config of a Hugging Face directory: its kiln_config.json, checked against config.json.

    Without kiln_config.json (a model not exported by kiln) it is derived from config.json alone.
    """
    derived = config_from_hf(read_hf_config(hf_dir), tokenizer_vocab)
    path = Path(hf_dir) / KILN_CONFIG_FILE
    if not path.is_file():
        return derived
    try:
        cfg = ModelConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as err:
        raise KilnError(f"cannot read a kiln model config at {path}: {err}") from err
    _check_configs_agree(cfg, derived)
    return cfg


def _check_configs_agree(cfg: ModelConfig, derived: ModelConfig) -> None:
    """Refuse a kiln_config.json that disagrees with config.json on a field both carry: one was edited."""
    names = [f.name for f in dataclasses.fields(ModelConfig) if f.name not in _KILN_ONLY_FIELDS]
    pairs = [(name, getattr(cfg, name), getattr(derived, name)) for name in names]
    pairs.append(("n_kv_heads", cfg.kv_heads, derived.kv_heads))
    diffs = [f"{name}={ours!r} in {KILN_CONFIG_FILE} but {theirs!r} from {HF_CONFIG_FILE}"
             for name, ours, theirs in pairs if ours != theirs]
    if diffs:
        raise KilnError(
            f"{KILN_CONFIG_FILE} and {HF_CONFIG_FILE} disagree (one of them was edited): " + "; ".join(diffs)
            + f"; make them agree, or delete {KILN_CONFIG_FILE} to import from {HF_CONFIG_FILE} alone"
        )


def read_hf_weights(hf_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory, from model.safetensors or its sharded index."""
    root = Path(hf_dir)
    if (root / HF_WEIGHTS_FILE).is_file():
        return load_file(str(root / HF_WEIGHTS_FILE), device=str(device))
    if (root / HF_INDEX_FILE).is_file():
        shards = sorted(set(json.loads((root / HF_INDEX_FILE).read_text())["weight_map"].values()))
        return {name: t for shard in shards for name, t in load_file(str(root / shard), device=str(device)).items()}
    raise KilnError(f"{root} has no {HF_WEIGHTS_FILE} or {HF_INDEX_FILE}; kiln reads safetensors weights only")


def load_hf_dir(hf_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
                ) -> Transformer:
    """A kiln Transformer holding the weights of a Hugging Face Olmo2 directory, converted in memory."""
    tokenizer = load_checkpoint_tokenizer(hf_dir)
    cfg = read_model_config_hf(hf_dir, tokenizer.get_vocab_size() if tokenizer else None)
    return build_with_state(cfg, state_from_hf(cfg, read_hf_weights(hf_dir, device)), dtype)


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a Hugging Face Olmo2 directory as a kiln model directory, with its tokenizer.json when present."""
    model = load_hf_dir(hf_dir)
    tokenizer = Path(hf_dir) / TOKENIZER_FILE
    return save_model_dir(model, out_dir, tokenizer if tokenizer.is_file() else None)
