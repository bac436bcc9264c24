"""The KV-cached, shared-context scorer gives the log-likelihoods of plain full-sequence scoring, lm-eval's and
transformers'; truncation cuts each pair as lm-eval does and is counted."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from kiln.eval.backends import KilnBackend, load_backend
from kiln.eval.evaluate import prepare, score_examples
from kiln.eval.scoring import Encoded, PairEncoder, Scorer
from kiln.eval.tasks import parse_tasks
from tests.eval.conftest import FIXTURES, encoder_for, tiny_model

TASKS = "arc_easy_rc_5shot,winogrande_rc_5shot,piqa_mc_5shot,hellaswag_bpb_0shot,copa_rc_0shot"


def naive_logprob(model, pair: Encoded, max_len: int) -> float:
    """Score ctx + cont in one plain forward pass, cut from the left to the model's length (lm-eval's rule)."""
    ids = (list(pair.context) + list(pair.continuation))[-(max_len + 1):]
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0].float()
    n = len(pair.continuation)
    return F.log_softmax(logits[-n:], -1).gather(-1, torch.tensor(ids[-n:])[:, None]).sum().item()


def all_pairs(prepared, encoder) -> list[Encoded]:
    return [e for p in prepared for r in p.requests for e in encoder.encode(r.pairs + (r.uncond or []))]


@pytest.mark.parametrize("max_len", [1024, 96])
def test_cached_scores_equal_full_sequence_scores(max_len):
    model, tok = tiny_model(max_seq_len=max_len)
    encoder = encoder_for(tok)
    prepared = prepare(parse_tasks(TASKS), limit=3, data_dir=FIXTURES)
    pairs = all_pairs(prepared, encoder)
    scores = Scorer(KilnBackend(model), batch_size=3).score(pairs)
    assert set(scores) == set(pairs)
    for pair in pairs:
        assert scores[pair].logprob == pytest.approx(naive_logprob(model, pair, max_len), abs=1e-4)
        assert scores[pair].tokens == len(pair.continuation)
        assert scores[pair].truncated == (len(pair.context) + len(pair.continuation) - 1 > max_len)
    assert any(s.truncated for s in scores.values()) == (max_len == 96)


def test_batch_size_and_token_budget_do_not_change_scores():
    model, tok = tiny_model()
    encoder = encoder_for(tok)
    pairs = all_pairs(prepare(parse_tasks(TASKS), limit=3, data_dir=FIXTURES), encoder)
    one = Scorer(KilnBackend(model), batch_size=1).score(pairs)
    many = Scorer(KilnBackend(model), batch_size=64, token_budget=1 << 20).score(pairs)
    assert max(abs(one[p].logprob - many[p].logprob) for p in pairs) < 1e-4


def counting_backend(model) -> tuple[KilnBackend, list[int]]:
    """A backend that records the real (not pad) tokens of every forward call that runs contexts."""
    backend, counted = KilnBackend(model), []
    prefill, extend, packed = backend.prefill, backend.extend, backend.packed

    def counting_prefill(ids, pad, extra):
        counted.append(int(pad.sum()))
        return prefill(ids, pad, extra)

    def counting_extend(state, rows, ids, pad, last_only=False):
        if last_only:  # the rest of each context after their common prefix
            counted.append(int(pad[:, -ids.shape[1]:].sum()))
        return extend(state, rows, ids, pad, last_only)

    def counting_packed(ids, positions, mask):
        counted.append(int((positions > 0).sum()) + len(ids))  # only a row's first token sits at position 0
        return packed(ids, positions, mask)

    backend.prefill, backend.extend, backend.packed = counting_prefill, counting_extend, counting_packed
    return backend, counted


def test_each_context_and_each_continuation_runs_once():
    model, tok = tiny_model()
    encoder = encoder_for(tok)
    backend, counted = counting_backend(model)
    pairs = all_pairs(prepare(parse_tasks("csqa_rc_0shot,piqa_rc_0shot,copa_rc_0shot"), limit=5, data_dir=FIXTURES),
                      encoder)
    scores = Scorer(backend, batch_size=4).score(pairs)
    once = sum(len(c) for c in {p.context for p in pairs}) + sum(len(p.continuation) - 1 for p in set(pairs))
    # the unconditional context "Answer:" (4 tokens), shared by every choice of every example, may be repeated
    uncond = [p for p in set(pairs) if p.context == encoder.encode([("Answer:", " x")])[0].context]
    assert len(uncond) > 20 and once <= sum(counted) <= once + len(uncond) * 4
    for pair in pairs:
        assert scores[pair].logprob == pytest.approx(naive_logprob(model, pair, 1024), abs=1e-4)


def test_a_shared_few_shot_prefix_runs_once_per_batch():
    model, tok = tiny_model()
    encoder = encoder_for(tok)
    backend, counted = counting_backend(model)
    prepared = prepare(parse_tasks("arc_easy_rc_5shot,csqa_rc_0shot"), limit=5, data_dir=FIXTURES)
    pairs = all_pairs(prepared, encoder)
    scores = Scorer(backend, batch_size=3).score(pairs)
    contexts = {p.context for p in pairs}
    five_shot = {encoder.encode([pair])[0].context for r in prepared[0].requests for pair in r.pairs}
    shared = len(os.path.commonprefix(list(five_shot)))
    assert len(five_shot) == 5 and shared > 200
    # each context at most once, and the five shots once per batch of (at most 3) contexts: twice, not five times
    continuations = sum(len(p.continuation) - 1 for p in set(pairs) if p.context not in five_shot)
    uncond = [p for p in set(pairs) if p.context == encoder.encode([("Answer:", " x")])[0].context]
    assert sum(counted) <= sum(map(len, contexts)) - (5 - 2) * shared + continuations + len(uncond) * 4
    for pair in pairs:
        assert scores[pair].logprob == pytest.approx(naive_logprob(model, pair, 1024), abs=1e-4)


def test_pair_encoding_moves_trailing_spaces_and_splits_the_whole():
    calls = []

    def encode(texts):
        calls.append(texts)
        return [[ord(c) for c in t] for t in texts]

    [pair] = PairEncoder(encode, prefix_id=0).encode([("Answer: ", "yes")])
    assert calls == [["Answer:"], ["Answer: yes"]]
    assert pair.context == (0, *map(ord, "Answer:")) and pair.continuation == tuple(map(ord, " yes"))


def test_kiln_and_transformers_backends_agree(hf_model):
    model, tok = tiny_model()
    encoder = encoder_for(tok)
    # packed rows (0-shot), a shared few-shot prefix through the cache (5-shot) and MC's single tokens
    prepared = prepare(parse_tasks("arc_easy_rc_0shot,winogrande_rc_0shot,arc_easy_rc_5shot,piqa_mc_5shot"), limit=3,
                       data_dir=FIXTURES)
    kiln_scores = score_examples(prepared, encoder, Scorer(KilnBackend(model), batch_size=2))
    hf_scores = score_examples(prepared, encoder, Scorer(load_backend(hf_model, "cpu", torch.float32, hf=True),
                                                         batch_size=2))
    for a, b in zip(kiln_scores, hf_scores):
        for ea, eb in zip(a, b):
            assert ea["logprobs"] == pytest.approx(eb["logprobs"], abs=1e-4)
            assert (ea["uncond_logprobs"] is None) == (eb["uncond_logprobs"] is None)
            if ea["uncond_logprobs"] is not None:
                assert ea["uncond_logprobs"] == pytest.approx(eb["uncond_logprobs"], abs=1e-4)


@pytest.mark.slow
def test_loglikelihoods_equal_lm_evaluation_harness(hf_model):
    """lm-eval's HF backend on the same exported model and the same requests (the prefix token written as text)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models import huggingface as lm_eval_hf

    model, tok = tiny_model()
    encoder = encoder_for(tok)
    prepared = prepare(parse_tasks("arc_easy_rc_5shot,winogrande_rc_0shot,hellaswag_rc_0shot,piqa_mc_5shot"),
                       limit=3, data_dir=FIXTURES)
    ours = score_examples(prepared, encoder, Scorer(KilnBackend(model)))
    prefix = tok.id_to_token(encoder.prefix[0])
    requests, expected = [], []
    for p, examples in zip(prepared, ours):
        for r, ex in zip(p.requests, examples):
            for (ctx, cont), logprob in zip(r.pairs, ex["logprobs"]):
                requests.append(Instance("loglikelihood", {}, (prefix + ctx, cont), len(requests)))
                expected.append(logprob)
    lm = lm_eval_hf.HFLM(pretrained=str(hf_model), backend="causal", batch_size=8, device="cpu", dtype="float32")
    theirs = [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert len(theirs) == len(expected) > 30
    assert max(abs(a - b) for a, b in zip(expected, theirs)) < 1e-4


def test_in_lockstep_every_batch_makes_three_forward_calls_and_the_scores_stay_the_same():
    """Ranks of a sharded model must call forward equally often: batches with and without a common prefix (no start
    token here, so some have none) and the idle batches of a rank that ran out all make exactly three calls."""
    model, tok = tiny_model()
    encoder = PairEncoder(encoder_for(tok).encode_batch, None)
    pairs = all_pairs(prepare(parse_tasks("arc_easy_rc_0shot,piqa_mc_0shot,copa_rc_0shot"), limit=4,
                              data_dir=FIXTURES), encoder)
    backend = KilnBackend(model)
    calls = []
    original = model.forward
    model.forward = lambda *args, **kwargs: calls.append(1) or original(*args, **kwargs)
    free = Scorer(backend, batch_size=3).score(pairs)
    calls.clear()
    counted = []
    locked = Scorer(backend, batch_size=3).score(pairs, sync=lambda n: counted.append(n) or n + 2)
    assert len(calls) == 3 * (counted[0] + 2)
    assert max(abs(free[p].logprob - locked[p].logprob) for p in pairs) < 1e-4
