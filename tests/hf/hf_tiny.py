"""Tiny models and a tiny tokenizer for the checkpoint and HF interop tests (a module name unique on sys.path)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from kiln.model.config import ModelConfig
from kiln.model.transformer import Transformer

WORDS = ["<|endoftext|>", "<|pad|>", "hello", "world", "the", "quick", "brown", "fox"]


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=200, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64, rope_theta=10_000.0)
    return ModelConfig(**{**base, **overrides})


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A model whose every tensor, norms included, is random, so that a swapped or mis-split tensor shows."""
    torch.manual_seed(seed)
    model = Transformer(cfg)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def tiny_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok
