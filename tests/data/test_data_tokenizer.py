from __future__ import annotations

import argparse

import numpy as np
import pytest

from kiln.data import commands
from kiln.data.tokenizer import (
    check_same_tokenizer,
    eos_id,
    load_tokenizer,
    token_byte_lengths,
    tokenizer_hash,
    train_bpe,
    vocab_size,
)
from kiln.errors import KilnError

TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Café, naïve, 東京 and 🙂 are not ASCII.",
         "To be, or not to be, that is the question."] * 5


def test_builtin_tokenizer_has_eos_zero_and_round_trips():
    tok = load_tokenizer("builtin")
    assert vocab_size(tok) == 8192
    assert eos_id(tok) == 0
    text = "Now is the winter of our discontent, café 🙂"
    assert tok.decode(tok.encode(text).ids) == text


def test_hash_is_stable_and_tells_tokenizers_apart():
    a, b = load_tokenizer("builtin"), load_tokenizer("builtin")
    assert tokenizer_hash(a) == tokenizer_hash(b)
    other = train_bpe(TEXTS, vocab_size=300)
    assert tokenizer_hash(other) != tokenizer_hash(a)
    check_same_tokenizer(tokenizer_hash(a), b, "dataset")
    with pytest.raises(KilnError, match="dataset was made with tokenizer"):
        check_same_tokenizer(tokenizer_hash(a), other, "dataset")


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(KilnError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(KilnError, match="cannot read tokenizer"):
        load_tokenizer(tmp_path / "broken.json")


def test_token_byte_lengths_sum_to_the_text_bytes():
    tok = load_tokenizer("builtin")
    lengths = token_byte_lengths(tok, 8320)  # padded past the vocabulary: the extra ids count 0 bytes
    assert lengths.shape == (8320,) and lengths[8192:].sum() == 0
    assert lengths[eos_id(tok)] == 0
    text = "Ay, marry, is't — but 東京 🙂 café!"
    ids = tok.encode(text).ids
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_training_is_deterministic_and_keeps_eos_at_zero():
    first, second = train_bpe(TEXTS, vocab_size=300), train_bpe(TEXTS, vocab_size=300)
    assert first.to_str() == second.to_str()
    assert eos_id(first) == 0 and vocab_size(first) <= 300
    text = "Unseen bytes still encode: ß ∑ 🙂"
    assert first.decode(first.encode(text).ids) == text
    with pytest.raises(KilnError, match="at least 257"):
        train_bpe(TEXTS, vocab_size=100)


def test_tokenizer_train_command_reads_every_input_format(tmp_path, corpus_dir, capsys):
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    out = tmp_path / "tok.json"
    args = parser.parse_args(["tokenizer", "train", str(corpus_dir), "--vocab-size", "300", "--out", str(out)])
    assert args.func(args) == 0
    tok = load_tokenizer(out)
    assert eos_id(tok) == 0
    assert "ignored_file: 1" in capsys.readouterr().out
    assert np.all(token_byte_lengths(tok, vocab_size(tok))[1:] > 0)
