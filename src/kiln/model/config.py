"""The typed model config, its validation, parameter counts and FLOPs per token.

Every architectural choice of the transformer is a field here; `kiln.model.transformer` only reads it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Literal

from kiln.errors import KilnError

NormKind = Literal["rmsnorm", "layernorm"]
BlockLayout = Literal["reordered", "prenorm"]
QKNorm = Literal["none", "full", "per_head"]
MLPKind = Literal["swiglu", "gelu", "relu"]
InitScheme = Literal["normal", "mitchell", "scaled_embed"]
Parametrization = Literal["standard", "mup"]

_CHOICES: dict[str, tuple[str, ...]] = {
    "norm": ("rmsnorm", "layernorm"),
    "block": ("reordered", "prenorm"),
    "qk_norm": ("none", "full", "per_head"),
    "mlp": ("swiglu", "gelu", "relu"),
    "init": ("normal", "mitchell", "scaled_embed"),
    "parametrization": ("standard", "mup"),
}

VOCAB_MULTIPLE = 128


class ConfigError(KilnError, ValueError):
    """A config value that cannot build a model; the message names the field and the valid values."""


@dataclass
class ModelConfig:
    """One decoder-only transformer. Defaults are OLMo 2's choices (OLMo 2 tech report, Table 1)."""

    vocab_size: int = 100278  # token ids the embedding covers (rows padded up to a multiple of 128)
    d_model: int = 256  # width of the residual stream
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads; d_model / n_heads is the (even) head dimension
    n_kv_heads: int | None = None  # key/value heads, fewer for grouped-query attention; null = n_heads
    d_ff: int = 1024  # hidden width of the MLP
    max_seq_len: int = 4096  # longest context: data.seq_len, and a prompt plus generated tokens, must fit
    norm: NormKind = "rmsnorm"  # rmsnorm (OLMo 2, Llama) or layernorm (OLMo 1)
    norm_eps: float = 1e-6  # added to the variance in every norm
    norm_affine: bool = True  # learnable norm weights (OLMo 1: none)
    norm_bias: bool = False  # a learnable bias in LayerNorm (with norm_affine)
    block: BlockLayout = "reordered"  # reordered: norm each sub-layer's output (OLMo 2); prenorm: its input
    qk_norm: QKNorm = "full"  # normalise queries and keys over all heads (OLMo 2), per head, or none
    clip_qkv: float | None = None  # clamp the q/k/v projections to [-c, c] (OLMo 1: 8); null = off
    rope_theta: float = 500_000.0  # RoPE base: larger = slower-rotating positions, for long contexts
    mlp: MLPKind = "swiglu"  # gated SwiGLU (OLMo 2, Llama), or a plain gelu or relu MLP
    bias: bool = False  # biases in the attention and MLP projections
    tie_embeddings: bool = False  # the output head shares the embedding matrix
    init: InitScheme = "normal"  # weight initialisation (the table in kiln.model.init)
    init_std: float = 0.02  # std of the normal init
    parametrization: Parametrization = "standard"  # mup: hyperparameters tuned at one width transfer (kiln.model.mup)
    mup_base_d_model: int | None = None  # muP's base width, where muP equals standard; required with mup
    mup_output_mult: float = 1.0  # muP: logits are multiplied by this / width_mult

    def __post_init__(self) -> None:
        self.validate()

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def width_mult(self) -> float:
        """muP's m = d_model / mup_base_d_model; 1 under standard parametrization."""
        return self.d_model / self.mup_base_d_model if self.parametrization == "mup" else 1.0

    @property
    def attention_scale(self) -> float:
        """Multiplier of q.k: 1/sqrt(D), or muP's sqrt(D_base)/D with D_base = D / m (equal at the base width)."""
        if self.parametrization == "mup":
            return (self.head_dim / self.width_mult) ** 0.5 / self.head_dim
        return self.head_dim**-0.5

    @property
    def output_mult(self) -> float:
        """Multiplier of the logits: muP's mup_output_mult / m; 1 under standard parametrization."""
        return self.mup_output_mult / self.width_mult if self.parametrization == "mup" else 1.0

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows: the vocabulary rounded up to a multiple of 128, for efficient matmuls."""
        return math.ceil(self.vocab_size / VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    def validate(self) -> None:
        for name, valid in _CHOICES.items():
            value = getattr(self, name)
            if value not in valid:
                raise ConfigError(f"model.{name}={value!r} is not one of {', '.join(valid)}")
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}"
            )
        if self.kv_heads <= 0 or self.n_heads % self.kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} is not divisible by model.n_kv_heads={self.n_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"head dimension {self.head_dim} must be even for RoPE")
        if self.init == "scaled_embed" and self.tie_embeddings:
            raise ConfigError("model.init=scaled_embed cannot be used with model.tie_embeddings=true: the tied "
                              "output head would inherit the std-1 embedding and start at a loss far above ln(vocab); "
                              "untie the embeddings or use init normal or mitchell")
        if self.clip_qkv is not None and self.clip_qkv <= 0:
            raise ConfigError(f"model.clip_qkv must be positive or null, got {self.clip_qkv}")
        self._validate_mup()

    def _validate_mup(self) -> None:
        if self.parametrization != "mup":
            return
        if self.mup_base_d_model is None:
            raise ConfigError("model.parametrization=mup needs model.mup_base_d_model: the width whose hyperparameters "
                              f"were tuned (muP equals standard there), e.g. {self.d_model} for this model itself")
        if self.mup_base_d_model <= 0:
            raise ConfigError(f"model.mup_base_d_model must be positive, got {self.mup_base_d_model}")
        if self.mup_output_mult <= 0:
            raise ConfigError(f"model.mup_output_mult must be positive, got {self.mup_output_mult}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, refusing unknown keys with a close-match suggestion."""
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(f"unknown model config key {key!r}{hint}")
        return cls(**data)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def norm_param_count(cfg: ModelConfig, dim: int) -> int:
    if not cfg.norm_affine:
        return 0
    return dim * (2 if cfg.norm == "layernorm" and cfg.norm_bias else 1)


def layer_matmul_param_count(cfg: ModelConfig) -> int:
    """Weights of one block's matrix multiplies: the q/k/v and output projections and the MLP."""
    d, q_out, kv_out = cfg.d_model, cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    n_in = 2 if cfg.mlp == "swiglu" else 1
    return d * (q_out + 2 * kv_out) + q_out * d + n_in * d * cfg.d_ff + cfg.d_ff * d


def layer_param_count(cfg: ModelConfig) -> int:
    """Parameters of one transformer block: matmul weights, biases and norm weights."""
    d, hd = cfg.d_model, cfg.head_dim
    q_out, kv_out = cfg.n_heads * hd, cfg.kv_heads * hd
    count = layer_matmul_param_count(cfg) + 2 * norm_param_count(cfg, d)
    if cfg.bias:
        count += q_out + 2 * kv_out + d + (2 if cfg.mlp == "swiglu" else 1) * cfg.d_ff + d
    if cfg.qk_norm == "full":
        count += norm_param_count(cfg, q_out) + norm_param_count(cfg, kv_out)
    elif cfg.qk_norm == "per_head":
        count += 2 * norm_param_count(cfg, hd)
    return count


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """Total, embedding and non-embedding parameter counts (embeddings include the untied output head)."""
    embed = cfg.padded_vocab_size * cfg.d_model
    head = 0 if cfg.tie_embeddings else embed
    body = cfg.n_layers * layer_param_count(cfg) + norm_param_count(cfg, cfg.d_model)
    return {"total": embed + head + body, "embedding": embed + head, "non_embedding": body}


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token (forward + backward): 6 * N_matmul + 12 * L * d * T.

    N_matmul counts every weight used in a matmul (blocks and output head; not the embedding lookup, norms or
    biases); the second term is attention's QK^T and AV products at context T. This is the estimate of PaLM
    (Chowdhery et al., 2022, Appendix B), which counts the full T x T score matrix even under a causal mask.
    """
    seq_len = seq_len or cfg.max_seq_len
    matmul_params = cfg.n_layers * layer_matmul_param_count(cfg) + cfg.padded_vocab_size * cfg.d_model
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return 6 * matmul_params + attention
