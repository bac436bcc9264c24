"""The KV cache changes only the cost: tokens and logits equal recomputing the whole sequence each step."""

from __future__ import annotations

import pytest
import torch

from kiln.generate import Decoder, generate, sample_next
from kiln.model.transformer import KVCache

from .gen_tiny import random_prompts, tiny_model


@pytest.mark.parametrize("overrides", [dict(), dict(n_kv_heads=None, tie_embeddings=True), dict(n_kv_heads=1)])
def test_greedy_with_cache_equals_without(overrides):
    model = tiny_model(**overrides)
    prompts = random_prompts([7, 2, 11, 5])
    with_cache = generate(model, prompts, max_new_tokens=20)
    assert with_cache == generate(model, prompts, max_new_tokens=20, use_cache=False)
    assert all(len(row) == 20 for row in with_cache)


def test_step_logits_with_cache_equal_full_recompute():
    model = tiny_model()
    prompts = random_prompts([9, 4, 6])
    cached, full = Decoder(model, prompts, 15), Decoder(model, prompts, 15, use_cache=False)
    with torch.no_grad():
        for _ in range(15):
            logits = cached.logits()
            torch.testing.assert_close(logits, full.logits(), rtol=0, atol=1e-5)
            next_ids = sample_next(logits)
            cached.append(next_ids)
            full.append(next_ids)


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_rows_equal_each_prompt_alone(use_cache):
    model = tiny_model(seed=3)
    prompts = random_prompts([3, 12, 1, 7], seed=3)
    batched = generate(model, prompts, max_new_tokens=16, use_cache=use_cache)
    for prompt, row in zip(prompts, batched, strict=True):
        assert [row] == generate(model, [prompt], max_new_tokens=16, use_cache=use_cache)


def test_left_padded_logits_equal_unpadded_logits():
    model = tiny_model(seed=4)
    prompts = random_prompts([3, 10], seed=4)
    batch = Decoder(model, prompts, 5)
    alone = Decoder(model, prompts[:1], 5)
    with torch.no_grad():
        for _ in range(5):
            logits = batch.logits()
            torch.testing.assert_close(logits[0], alone.logits()[0], rtol=0, atol=1e-5)
            next_ids = sample_next(logits)
            batch.append(next_ids)
            alone.append(next_ids[:1])


def test_cache_prefill_without_pad_mask_is_causal():
    model = tiny_model()
    ids = torch.tensor(random_prompts([8]))
    with torch.no_grad():
        full = model(ids)
        cache = KVCache(model.cfg, 1, 12)
        prefill = model(ids[:, :5], cache=cache)
        step = model(ids[:, 5:], cache=cache)
    torch.testing.assert_close(torch.cat([prefill, step], dim=1), full, rtol=0, atol=1e-5)
