"""Named model presets, each derived from (layers, width, heads, MLP hidden) plus a family.

Published shapes: OLMo 2 1B/7B/13B from the OLMo 2 tech report (Table 1, OLMo et al., 2024); OLMo-0424 7B
from the OLMo 1 configs (non-parametric LayerNorm, clip_qkv 8, mitchell init); Llama 2 from Touvron et al.,
2023. The small OLMo 2 sizes are Kiln's own ladder, named by their non-embedding parameter count.
"""

from __future__ import annotations

import difflib
from typing import Any

from kiln.model.config import ConfigError, ModelConfig

DOLMA2_VOCAB = 100278
NEOX_VOCAB = 50280
LLAMA_VOCAB = 32000

# name: (n_layers, d_model, n_heads, d_ff)
_OLMO2_SHAPES = {
    "tiny": (4, 256, 4, 1024),
    "20m": (8, 384, 6, 1536),
    "60m": (14, 512, 8, 2048),
    "150m": (16, 768, 12, 3072),
    "300m": (18, 1024, 16, 4096),
    "1b": (16, 2048, 16, 8192),
    "7b": (32, 4096, 32, 11008),
    "13b": (40, 5120, 40, 13824),
}
_LLAMA_SHAPES = {
    "tiny": (4, 256, 4, 688),
    "7b": (32, 4096, 32, 11008),
    "13b": (40, 5120, 40, 13824),
}

_FAMILIES: dict[str, dict[str, Any]] = {
    # OLMo 2: RMSNorm eps 1e-6, reordered norm, QK-norm, RoPE theta 500k, normal(0.02) init.
    "olmo2": dict(vocab_size=DOLMA2_VOCAB, norm="rmsnorm", norm_eps=1e-6, block="reordered", qk_norm="full",
                  rope_theta=500_000.0, init="normal", max_seq_len=4096),
    # OLMo-0424 (OLMo 1 7B, April 2024): non-parametric LayerNorm, pre-norm, clip_qkv 8, mitchell init.
    "olmo1": dict(vocab_size=NEOX_VOCAB, norm="layernorm", norm_affine=False, norm_eps=1e-5, block="prenorm",
                  qk_norm="none", clip_qkv=8.0, rope_theta=10_000.0, init="mitchell", max_seq_len=4096),
    # Llama 2: pre-norm RMSNorm, no QK-norm, RoPE theta 10k.
    "llama": dict(vocab_size=LLAMA_VOCAB, norm="rmsnorm", norm_eps=1e-5, block="prenorm", qk_norm="none",
                  rope_theta=10_000.0, init="normal", max_seq_len=4096),
}


def _shape(layers: int, width: int, heads: int, hidden: int) -> dict[str, int]:
    return dict(n_layers=layers, d_model=width, n_heads=heads, d_ff=hidden)


PRESETS: dict[str, dict[str, Any]] = {
    **{f"olmo2-{k}": {**_FAMILIES["olmo2"], **_shape(*v)} for k, v in _OLMO2_SHAPES.items()},
    "olmo1-7b": {**_FAMILIES["olmo1"], **_shape(32, 4096, 32, 11008)},  # OLMo-0424 trained at 4096
    **{f"llama-{k}": {**_FAMILIES["llama"], **_shape(*v)} for k, v in _LLAMA_SHAPES.items()},
}


def preset(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named preset, with optional field overrides (e.g. a smaller vocabulary)."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown preset {name!r}{hint}; valid presets: {', '.join(PRESETS)}")
    return ModelConfig(**{**PRESETS[name], **overrides})
