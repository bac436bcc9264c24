from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

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
# Texts whose decoded bytes the per-token byte lengths must add up to: ASCII, accents, CJK, emoji, whitespace runs.
BYTE_TEXTS = ["the cat sat on the mat", "Their café, the 日本 town 🙂!", "ß and 🚀 were never seen",
              "two  spaces,\nthen a newline\tand a tab", "The hat: 12.5 cm"]
# A Llama-style tokenizer learns its merges on these; 日, 本 and 🙂, seen once, fall out of its alphabet.
SPM_TRAIN = [*["the cat sat on the mat, then the dog ate the hat.", "The café in the town is their café."] * 3,
             "日本 🙂"]
BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]
# Decoders of SentencePiece-style tokenizers, each with the bytes it strips from the start of a text: the first
# token's "▁" is a space the decoder drops there but that the same token keeps in the middle of text.
SPM_DECODERS = {
    "llama": (decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                 decoders.Strip(" ", 1, 0)]), 1),
    "metaspace": (decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()]), 1),
    "gemma": (decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]), 0),
}


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


def _spm_tokenizer(decoder: decoders.Decoder) -> Tokenizer:
    """A tiny Llama-like BPE: Metaspace pieces, `<0x00>`..`<0xFF>` byte fallback in the model vocabulary (ids 3-258)."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", *BYTE_TOKENS],
                                  limit_alphabet=len(set("".join(SPM_TRAIN))) - 3, show_progress=False)
    tok.train_from_iterator(SPM_TRAIN, trainer=trainer)
    spec = json.loads(tok.to_str())
    spec["model"].update(byte_fallback=True, fuse_unk=True)
    spec["added_tokens"] = [added for added in spec["added_tokens"] if added["content"] not in BYTE_TOKENS]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoder
    tok.add_tokens(["<|note|>"])
    return tok


@pytest.mark.parametrize("kind", ["builtin", "trained"])
def test_byte_level_token_byte_lengths_sum_to_the_text_bytes(kind):
    tok = load_tokenizer("builtin") if kind == "builtin" else train_bpe(TEXTS, vocab_size=300)
    size = vocab_size(tok)
    lengths = token_byte_lengths(tok, size + 128)  # padded past the vocabulary: the extra ids count 0 bytes
    assert lengths.shape == (size + 128,) and lengths[size:].sum() == 0
    assert lengths[eos_id(tok)] == 0
    for text in [*BYTE_TEXTS, "Ay, marry, is't — but 東京 🙂 café!"]:
        ids = tok.encode(text).ids
        assert int(lengths[ids].sum()) == len(tok.decode(ids).encode("utf-8")) == len(text.encode("utf-8"))
    whole = [token_id for token_id in range(size) if "\ufffd" not in tok.decode([token_id])]
    assert all(lengths[token_id] == len(tok.decode([token_id]).encode("utf-8")) for token_id in whole)


@pytest.mark.parametrize("decoder_name", SPM_DECODERS)
def test_sentencepiece_token_byte_lengths_sum_to_the_decoded_bytes(decoder_name):
    decoder, stripped = SPM_DECODERS[decoder_name]
    tok = _spm_tokenizer(decoder)
    assert tok.token_to_id("日") is None and tok.token_to_id("▁the") is not None
    lengths = token_byte_lengths(tok, vocab_size(tok))
    for text in [*BYTE_TEXTS, "a <|note|> for the cat"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == (" " * (1 - stripped)) + text
        assert int(lengths[ids].sum()) == len(tok.decode(ids).encode("utf-8")) + stripped
    assert tok.encode("日本").tokens == ["▁", "<0xE6>", "<0x97>", "<0xA5>", "<0xE6>", "<0x9C>", "<0xAC>"]


def test_sentencepiece_pieces_count_their_space_and_fallback_bytes_count_one():
    tok = _spm_tokenizer(SPM_DECODERS["llama"][0])
    lengths = token_byte_lengths(tok, vocab_size(tok) + 8)
    for token, n_bytes in {"▁the": 4, "▁": 1, "hat": 3, "é": 2, "▁café": 6, "<0xC3>": 1, "<0x41>": 1, "<0x0A>": 1,
                           "<|note|>": 8, "<unk>": 0, "<s>": 0, "</s>": 0}.items():
        assert lengths[tok.token_to_id(token)] == n_bytes, token
    assert lengths[vocab_size(tok):].sum() == 0


def test_training_is_deterministic_and_keeps_eos_at_zero():
    first, second = train_bpe(TEXTS, vocab_size=300), train_bpe(TEXTS, vocab_size=300)
    assert first.to_str() == second.to_str()
    assert eos_id(first) == 0 and vocab_size(first) <= 300
    text = "Unseen bytes still encode: ß ∑ 🙂"
    assert first.decode(first.encode(text).ids) == text
    with pytest.raises(KilnError, match="at least 257"):
        train_bpe(TEXTS, vocab_size=100)


def test_split_digits_spells_every_number_digit_by_digit():
    texts = [f"x=\"{n}.{n % 10}\" and y=\"{n * 7 % 101}.5\"" for n in range(101)] * 3
    merged, split = train_bpe(texts, vocab_size=400), train_bpe(texts, vocab_size=400, split_digits=True)
    assert any(len(merged.encode(str(n)).tokens) == 1 for n in range(10, 101))  # the plain BPE merges digits
    for n in (7, 28, 61, 100):
        text = f"x=\"{n}.5\""
        digits = [t for t in split.encode(text).tokens if any(c.isdigit() for c in t)]
        assert digits == list(f"{n}5")
        assert split.decode(split.encode(text).ids) == text


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
