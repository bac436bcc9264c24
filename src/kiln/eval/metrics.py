"""Per-example scores to OLMES's metrics, and per-example metrics to task means.

For choices i with continuation log-probability `ll_i` (sum over its tokens):
  acc_raw        argmax ll_i
  acc_per_token  argmax ll_i / tokens_i
  acc_per_char   argmax ll_i / characters_i    (OLMES "per char", OLMo's `len_norm`; the leading space counts)
  acc_uncond     argmax ll_i - ll_i(uncond)    (OLMES PMI: the unconditional context is "Answer:")
  bpb            -ll_gold / ln 2 / UTF-8 bytes of the gold continuation (OLMo's `bpb`, the ladder's task loss)
Ties go to the first choice, as `torch.argmax` in OLMo's ICLMetric does.
"""

from __future__ import annotations

import math

from kiln.eval.scoring import bits_per_byte

ACC_METRICS = ("acc_raw", "acc_per_token", "acc_per_char", "acc_uncond")


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def example_metrics(continuations: list[str], logprobs: list[float], tokens: list[int], gold: int,
                    uncond_logprobs: list[float] | None) -> dict[str, float]:
    """Every metric of one example (1.0/0.0 for accuracies); bpb-only when there is a single continuation."""
    out = {"bpb": bits_per_byte(logprobs[gold], continuations[gold])}
    if len(continuations) == 1:
        return out
    scores = {
        "acc_raw": logprobs,
        "acc_per_token": [lp / n for lp, n in zip(logprobs, tokens)],
        "acc_per_char": [lp / max(len(text), 1) for lp, text in zip(logprobs, continuations)],
    }
    if uncond_logprobs is not None:
        scores["acc_uncond"] = [lp - u for lp, u in zip(logprobs, uncond_logprobs)]
    for name, values in scores.items():
        out[name] = float(_argmax(values) == gold)
    return out


def task_means(examples: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over the examples that have it."""
    names = dict.fromkeys(name for ex in examples for name in ex)
    return {name: sum(ex[name] for ex in examples if name in ex) / sum(name in ex for ex in examples)
            for name in names}


def chance_accuracy(n_choices: list[int]) -> float:
    """Expected accuracy of a uniform random guess: the mean of 1/choices over examples."""
    return sum(1.0 / n for n in n_choices) / max(len(n_choices), 1)


def chance_bpb(gold_tokens: list[int], gold_texts: list[str], vocab_size: int) -> float:
    """Bits per byte of a model that spreads its probability evenly over the vocabulary."""
    per_example = [n * math.log2(vocab_size) / max(len(t.encode("utf-8")), 1) for n, t in zip(gold_tokens, gold_texts)]
    return sum(per_example) / max(len(per_example), 1)
