"""`kiln generate` end to end on tiny checkpoints, as a user runs it."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers

from kiln.checkpoint import save_model_dir
from kiln.cli import main

from .gen_tiny import tiny_model

WORDS = ["<|endoftext|>", "<|pad|>", "hello", "world", "the", "quick", "brown", "fox"]


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<|pad|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_generate_text_prompts_from_a_run_folder(tmp_path, capsys):
    save_model_dir(tiny_model(vocab_size=len(WORDS)), tmp_path / "run" / "step5", _tokenizer())
    args = ["generate", str(tmp_path / "run"), "--prompt", "hello", "--prompt", "the quick brown",
            "--max-new-tokens", "6"]
    assert main(args) == 0
    cached = capsys.readouterr().out
    assert main([*args, "--no-cache"]) == 0
    assert capsys.readouterr().out == cached
    blocks = cached.split("---\n")
    assert blocks[0].startswith("hello") and blocks[1].startswith("the quick brown")
    for block in blocks[:2]:
        assert set(block.split()) <= set(WORDS)  # tokenizer vocabulary only, never a padding id


def test_generate_ids_without_tokenizer(tmp_path, capsys):
    save_model_dir(tiny_model(), tmp_path)
    args = ["generate", str(tmp_path), "--ids", "--prompt", "1 2 3", "--prompt", "4", "--max-new-tokens", "5",
            "--temperature", "0.9", "--top-k", "40", "--top-p", "0.9", "--seed", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    lines = first.splitlines()
    assert lines[0].startswith("1 2 3 -> ") and lines[1].startswith("4 -> ")
    assert len(lines[1].split("-> ")[1].split()) == 5
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_generate_without_tokenizer_asks_for_ids(tmp_path, capsys):
    save_model_dir(tiny_model(), tmp_path)
    assert main(["generate", str(tmp_path), "--prompt", "hello"]) == 2
    assert "--ids" in capsys.readouterr().err
