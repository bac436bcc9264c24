"""Tiny random models for the generation tests (a module name unique on sys.path)."""

from __future__ import annotations

import torch

from kiln.model.config import ModelConfig
from kiln.model.transformer import Transformer


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    """A random model with sharp next-token distributions (large weights), so greedy ties are unlikely."""
    base = dict(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=64,
                rope_theta=10_000.0)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**base, **overrides}))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def random_prompts(lengths: list[int], vocab: int = 200, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]
