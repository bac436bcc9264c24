"""Any Hugging Face causal LM folder is scored on transformers, packed rows and KV cache alike, as plain
full-sequence scoring of each pair would score it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from kiln.cli import main
from kiln.eval.evaluate import prepare
from kiln.eval.models import load_model
from kiln.eval.tasks import parse_tasks

from .conftest import BUILTIN_TOKENIZER, FIXTURES

TASKS = "arc_easy_rc_0shot,winogrande_rc_5shot,piqa_mc_0shot"


def tiny_hf_model(kind: str, folder) -> None:
    torch.manual_seed(0)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(BUILTIN_TOKENIZER), eos_token="<|endoftext|>")
    vocab = len(tokenizer)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             max_position_embeddings=1024))
    else:  # learned absolute positions: packed rows must pass them explicitly
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def full_sequence_logprob(model, context: tuple[int, ...], continuation: tuple[int, ...]) -> float:
    ids = torch.tensor([list(context) + list(continuation)[:-1]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -len(continuation):].float()
    return F.log_softmax(logits, -1).gather(-1, torch.tensor(continuation)[:, None]).sum().item()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_hf_causal_lm_folder_scores_as_full_sequences_do(kind, tmp_path):
    folder = tmp_path / kind
    tiny_hf_model(kind, folder)
    out = tmp_path / "eval"
    assert main(["eval", str(folder), "--tasks", TASKS, "--limit", "3", "--data-dir", str(FIXTURES),
                 "--out", str(out), "--per-example", "--batch-size", "2"]) == 0
    assert json.loads((out / "results.json").read_text())["model"]["runs_on"] == "transformers"
    lines = [json.loads(line) for line in (out / "per_example.jsonl").read_text().splitlines()]

    loaded = load_model(folder)
    reference = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    for prepared in prepare(parse_tasks(TASKS), 3, FIXTURES):
        mine = [line for line in lines if line["task"] == prepared.task.name]
        for request, line in zip(prepared.requests, mine, strict=True):
            for pair, choice in zip(loaded.encoder.encode(request.pairs), line["choices"], strict=True):
                expected = full_sequence_logprob(reference, pair.context, pair.continuation)
                assert choice["logprob"] == pytest.approx(expected, abs=1e-4), (prepared.task.name, kind)
