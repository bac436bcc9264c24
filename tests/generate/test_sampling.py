"""Token selection on hand-made logits: top-k, top-p, greedy, seeded sampling."""

from __future__ import annotations

import math

import pytest
import torch

from kiln.errors import KilnError
from kiln.generate import filter_top_k, filter_top_p, generate, sample_next

from .gen_tiny import random_prompts, tiny_model

NEG_INF = float("-inf")


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 5.0], [0.0, -1.0, 4.0, 4.0]])
    assert filter_top_k(logits, 2).tolist() == [[NEG_INF, 3.0, NEG_INF, 5.0], [NEG_INF, NEG_INF, 4.0, 4.0]]
    assert filter_top_k(logits, 1).tolist()[0] == [NEG_INF, NEG_INF, NEG_INF, 5.0]
    assert torch.equal(filter_top_k(logits, 4), logits)
    assert torch.equal(filter_top_k(logits, None), logits)


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = [0.15, 0.5, 0.05, 0.3]  # out of order, so the mapping back from sorted order is exercised
    logits = torch.tensor([[math.log(p) for p in probs]])
    kept = lambda p: (filter_top_p(logits, p) > NEG_INF).squeeze(0).tolist()
    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.7
    assert kept(0.8) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.8 exactly (up to rounding)
    assert kept(0.81) == [True, True, False, True]
    assert kept(0.4) == [False, True, False, False]  # the most likely token is always kept
    assert kept(1.0) == [True, True, True, True]


def test_greedy_and_top_k_1_pick_the_argmax():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 2.9, 0.0]])
    assert sample_next(logits).tolist() == [1, 0]
    gen = torch.Generator().manual_seed(0)
    assert sample_next(logits, temperature=5.0, top_k=1, generator=gen).tolist() == [1, 0]


def test_samples_stay_inside_the_nucleus():
    logits = torch.log(torch.tensor([[0.15, 0.5, 0.05, 0.3]])).expand(2000, 4)
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits, temperature=1.0, top_p=0.7, generator=gen)
    assert set(draws.tolist()) == {1, 3}
    share_of_1 = (draws == 1).float().mean().item()
    assert abs(share_of_1 - 0.5 / 0.8) < 0.05  # renormalised over the nucleus


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    prompts = random_prompts([5, 3])
    kwargs = dict(max_new_tokens=12, temperature=1.5, top_k=50, top_p=0.95)
    first = generate(model, prompts, seed=7, **kwargs)
    assert generate(model, prompts, seed=7, **kwargs) == first
    assert generate(model, prompts, seed=7, use_cache=False, **kwargs) == first
    assert generate(model, prompts, seed=8, **kwargs) != first


def test_padding_ids_past_vocab_are_never_generated():
    model = tiny_model(vocab_size=150)  # padded to 256: rows 150..255 are padding
    with torch.no_grad():
        model.head.weight[150:] = model.head.weight[:106] * 50  # make padding rows win the argmax
    prompts = random_prompts([4, 6], vocab=150)
    with torch.no_grad():
        assert model(torch.tensor([prompts[0]]))[0, -1].argmax() >= 150
    for out in generate(model, prompts, max_new_tokens=10) + generate(model, prompts, 10, temperature=1.0, seed=0):
        assert max(out) < 150
    small_vocab_prompts = random_prompts([4, 6], vocab=20)
    assert max(max(out) for out in generate(model, small_vocab_prompts, 10, vocab_size=20)) < 20


def test_eos_stops_each_row():
    model = tiny_model()
    prompts = random_prompts([5, 3, 4], seed=1)
    free = generate(model, prompts, max_new_tokens=12)
    eos_id = free[0][3]
    assert eos_id not in free[0][:3]
    stopped = generate(model, prompts, max_new_tokens=12, eos_id=eos_id)
    assert stopped[0] == free[0][:4]  # ends with (and includes) the EOS token
    for free_row, row in zip(free, stopped, strict=True):
        cut = free_row.index(eos_id) + 1 if eos_id in free_row else len(free_row)
        assert row == free_row[:cut]


def test_eos_stops_early_when_every_row_is_done():
    model = tiny_model()
    prompt = random_prompts([5], seed=2)
    eos_id = generate(model, prompt, max_new_tokens=1)[0][0]
    assert generate(model, prompt, max_new_tokens=30, eos_id=eos_id) == [[eos_id]]


@pytest.mark.parametrize("kwargs, named", [
    (dict(prompts_ids=[[1, 2], []]), "empty prompt"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=1.5), "top_p"),
    (dict(prompts_ids=[[1, 250]]), r"\[250\]"),
    (dict(max_new_tokens=100), "max_seq_len 64"),
])
def test_bad_arguments_are_named(kwargs, named):
    args = {"prompts_ids": [[1, 2]], "max_new_tokens": 4, **kwargs}
    with pytest.raises(KilnError, match=named):
        generate(tiny_model(), **args)


def test_decoding_runs_compiled_blocks_eagerly():
    """A model trained with trainer.compile has compiled blocks; decoding with a growing cache would recompile them
    at every length (up to torch's recompile limit), so generate runs them eagerly: nothing is compiled."""
    from torch._dynamo.utils import counters

    from kiln.train.wrapping import compile_blocks

    model = tiny_model()
    prompts = random_prompts([5, 3], seed=3)
    eager = generate(model, prompts, max_new_tokens=6)
    compile_blocks(model)
    torch._dynamo.reset()
    counters.clear()
    assert generate(model, prompts, max_new_tokens=6) == eager
    assert sum(counters["frames"].values()) == 0  # dynamo never looked at a frame
