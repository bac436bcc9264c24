"""The OLMo-family decoder-only transformer, top to bottom: rope -> attention -> mlp -> block -> model (norms in
kiln.model.norms, initialisation in kiln.model.init).

Shapes: B batch, T new tokens, S keys (cache + new), H query heads, K key/value heads, D head dim, C width.
No parallelism lives here; `kiln.distributed` wraps this module from the outside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kiln.model.config import ModelConfig
from kiln.model.init import init_weights
from kiln.model.norms import make_norm


def rope_tables(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of shape (B, T, 1, D/2) for integer positions (B, T): one angle per pair (i, i + D/2)."""
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = (positions.float()[..., None] * inv_freq)[:, :, None, :]  # (B, T, 1, D/2)
    return angles.cos(), angles.sin()


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) of (B, T, heads, D) by its angle (halves layout: GPT-NeoX, HF), in fp32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    if torch.compiler.is_compiling():  # the compiler fuses the plain form; writes into `out=` break its graph
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    out1, out2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=out1).addcmul_(x2, sin, value=-1)  # x1 cos - x2 sin
    torch.mul(x2, cos, out=out2).addcmul_(x1, sin)  # x2 cos + x1 sin
    return out


class _RopeFunction(torch.autograd.Function):
    """RoPE without autograd's copies: a rotation's gradient is the rotation by the opposite angle."""

    @staticmethod
    def forward(ctx, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin).to(grad.dtype), None, None


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, T, heads, D) by position; computed in fp32 and cast back."""
    return _RopeFunction.apply(x, cos, sin)


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `max_len` positions."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32) -> None:
        shape = (cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions already filled, shared by all layers
        self.max_len = max_len

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store (B, K, T, D) new keys/values at the current length and return all keys/values so far."""
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were asked for")
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def select(self, rows: Tensor) -> KVCache:
        """A cache whose row i copies row `rows[i]` of this one: one scored prompt continued several ways."""
        picked = object.__new__(KVCache)
        picked.keys, picked.values = self.keys[:, rows], self.values[:, rows]
        picked.length, picked.max_len = self.length, self.max_len
        return picked


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_dim, self.kv_dim = cfg.n_heads * hd, cfg.kv_heads * hd
        self.scale = cfg.attention_scale if cfg.parametrization == "mup" else None  # None: SDPA's 1/sqrt(D)
        self.qkv = nn.Linear(cfg.d_model, self.q_dim + 2 * self.kv_dim, bias=cfg.bias)
        self.out = nn.Linear(self.q_dim, cfg.d_model, bias=cfg.bias)
        self.q_norm = self.k_norm = None
        if cfg.qk_norm == "full":  # OLMo 2: one norm over all heads of the projection
            self.q_norm, self.k_norm = make_norm(cfg, self.q_dim), make_norm(cfg, self.kv_dim)
        elif cfg.qk_norm == "per_head":
            self.q_norm, self.k_norm = make_norm(cfg, hd), make_norm(cfg, hd)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        cfg, (B, T, _) = self.cfg, x.shape
        qkv = self.qkv(x)
        if cfg.clip_qkv is not None:  # OLMo 1: clamp projections to tame activations
            qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
        q, k, v = qkv.split((self.q_dim, self.kv_dim, self.kv_dim), dim=-1)
        q, k = q.float(), k.float()  # fp32 through QK-norm and RoPE, one cast back after (no-op in fp32)
        if cfg.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, cfg.n_heads, cfg.head_dim)  # (B, T, H, D)
        k = k.view(B, T, cfg.kv_heads, cfg.head_dim)  # (B, T, K, D)
        v = v.view(B, T, cfg.kv_heads, cfg.head_dim)
        if cfg.qk_norm == "per_head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, K, S, D)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None,  # None only when start == 0, so S == T
            scale=self.scale, enable_gqa=cfg.kv_heads != cfg.n_heads,
        )  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, self.q_dim))


class MLP(nn.Module):
    """SwiGLU (gate and up projections fused in one matmul) or a plain GELU/ReLU MLP."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        n_in = 2 if cfg.mlp == "swiglu" else 1
        self.up = nn.Linear(cfg.d_model, n_in * cfg.d_ff, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "gelu":
            h = F.gelu(h)
        else:
            h = F.relu(h)
        return self.down(h)


class Block(nn.Module):
    """One layer, pre-norm (Llama, OLMo 1) or reordered norm (OLMo 2: norm on each sub-layer's output)."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.reordered = layer, cfg.block == "reordered"
        self.attn, self.mlp = Attention(cfg), MLP(cfg)
        self.attn_norm, self.mlp_norm = make_norm(cfg, cfg.d_model), make_norm(cfg, cfg.d_model)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                cache: KVCache | None = None) -> Tensor:
        if self.reordered:
            h = x + self.attn_norm(self.attn(x, rope, mask, cache, self.layer))
            return h + self.mlp_norm(self.mlp(h))
        h = x + self.attn(self.attn_norm(x), rope, mask, cache, self.layer)
        return h + self.mlp(self.mlp_norm(h))


def attention_mask(T: int, start: int, doc_ids: Tensor | None, pad_mask: Tensor | None,
                   device: torch.device) -> Tensor | None:
    """Boolean (B|1, 1, T, S) mask, True where a query may attend; None means plain causal attention.

    Each query always sees itself, so a left-padding query never gets an all-masked row (NaN in SDPA).
    """
    if doc_ids is None and pad_mask is None and start == 0:
        return None
    q_pos = torch.arange(start, start + T, device=device)
    k_pos = torch.arange(start + T, device=device)
    mask = (k_pos[None, :] <= q_pos[:, None])[None, None]  # (1, 1, T, S)
    if pad_mask is not None:
        mask = mask & pad_mask[:, None, None, :].bool()
    if doc_ids is not None:
        mask = mask & (doc_ids[:, None, :, None] == doc_ids[:, None, None, :])
    return mask | (k_pos[None, :] == q_pos[:, None])[None, None]


def prefix_lm_mask(bidirectional: Tensor, T: int, pad_mask: Tensor | None = None) -> Tensor:
    """Boolean (B, 1, T, T) mask of a prefix LM (PaliGemma): the first `bidirectional[b]` positions of row b see
    each other both ways, the rest attend causally; `pad_mask` (B, T) hides padding keys, each query sees itself."""
    pos = torch.arange(T, device=bidirectional.device)
    inside = pos[None, :] < bidirectional[:, None]  # (B, T)
    mask = (pos[None, :] <= pos[:, None])[None] | (inside[:, :, None] & inside[:, None, :])  # (B, T, T)
    if pad_mask is not None:
        mask = mask & pad_mask[:, None, :].bool()
    return (mask | (pos[None, :] == pos[:, None])[None])[:, None]


class Transformer(nn.Module):
    """Token ids (B, T) -> logits (B, T, padded_vocab). Ids past `vocab_size` are padding, never targets."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.padded_vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = make_norm(cfg, cfg.d_model)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.padded_vocab_size, bias=False)
        if self.embed.weight.device.type != "meta":
            init_weights(self)

    def forward(self, input_ids: Tensor, *, doc_ids: Tensor | None = None, pad_mask: Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False, positions: Tensor | None = None,
                attn_mask: Tensor | None = None, prefix: Tensor | None = None,
                head_fn: Callable[[Tensor, Tensor], Any] | None = None) -> Any:
        """`doc_ids` (B, T) keeps attention inside documents; `pad_mask` (B, cache + T) marks real tokens.
        `last_only` returns the last position's logits (B, 1, V): scoring a prompt needs no more. `positions`
        (B, T) and a boolean `attn_mask` (B, 1, T, T) run packed rows, such as several continuations of one prompt
        that each see the prompt but not each other; they replace the positions and mask derived from the rest.
        `prefix` (B, P, C) are embeddings placed before the tokens (a VLM's image tokens); the logits then cover
        P + T positions. `head_fn(hidden, weight)` replaces the output projection: it gets the final (B, T, C)
        states and the (V, C) output weight and its result is returned, so a loss can project a block of rows at
        a time inside forward, where FSDP has the weight gathered."""
        x = self.embed(input_ids)  # (B, T, C)
        if prefix is not None:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)
        B, T = x.shape[:2]
        start = cache.length if cache is not None else 0
        if prefix is not None and doc_ids is not None:
            raise ValueError("doc_ids cover the tokens only; they cannot be combined with prefix embeddings")
        if doc_ids is not None and cache is not None:
            raise ValueError("intra-document masking is for training; it cannot be combined with a KV cache")
        if positions is None:
            positions = self._positions(B, T, start, pad_mask, input_ids.device)
        rope = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        mask = attn_mask if attn_mask is not None else attention_mask(T, start, doc_ids, pad_mask, input_ids.device)
        for block in self.blocks:
            x = block(x, rope, mask, cache)
        if cache is not None:
            cache.length += T
        x = self.norm(x[:, -1:] if last_only else x)
        if self.cfg.output_mult != 1.0:  # muP's readout multiplier, applied to the (smaller) input of the head
            x = x * self.cfg.output_mult
        if head_fn is not None:
            return head_fn(x, self.head.weight if self.head is not None else self.embed.weight)
        return self.head(x) if self.head is not None else F.linear(x, self.embed.weight)

    @staticmethod
    def _positions(B: int, T: int, start: int, pad_mask: Tensor | None, device: torch.device) -> Tensor:
        """Positions count real tokens only, so a left-padded prompt starts at position 0."""
        if pad_mask is None:
            return torch.arange(start, start + T, device=device).expand(B, T)
        return (pad_mask.long().cumsum(-1) - 1).clamp(min=0)[:, start:start + T]
