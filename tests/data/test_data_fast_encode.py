from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from kiln.data.fast_encode import FastEncoder, translate_pattern
from kiln.data.tokenizer import load_tokenizer

# The pre-tokenizer regex of cl100k, OLMo 2's dolma2 and other tiktoken-style tokenizers.
CL100K = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
TRICKY = ["Hello world", "ÅNGSTRÖM ²½ Ⅻ ① x² ٣٤", "tabs\t\tand\r\nCRLF\n\n\n  spaces   end  ", "I'M HERE'S we'LL 'ſ",
          "\x1c\x1dseparators\x1f", "emoji 🙂🙂 東京 café 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
          "<|endoftext|> stays text, |||PHONE_NUMBER||| is added",
          "1234567 12.5e-3", "no\u00a0break\u2003em space\u3000", "", "   ", "trailing newline\n"]


def _cl100k_style(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CL100K), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts * 3 + ["The quick brown fox jumps over the lazy dog. " * 20], trainer=trainer)
    tok.add_tokens(["|||PHONE_NUMBER|||"])
    return tok


@pytest.mark.parametrize("kind", ["builtin", "cl100k"])
def test_fast_encoder_gives_the_library_ids(kind, corpus_dir):
    tok = load_tokenizer("builtin") if kind == "builtin" else _cl100k_style(TRICKY)
    tok.encode_special_tokens = True
    fast = FastEncoder.build(tok)
    assert fast is not None
    texts = TRICKY + [p.read_text(encoding="utf-8") for p in corpus_dir.glob("*.*")]
    for text in texts:
        assert fast.encode(text) == tok.encode(text, add_special_tokens=False).ids, repr(text)


def test_unknown_pipelines_are_left_to_the_library():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    assert FastEncoder.build(tok) is None
    assert translate_pattern(r"\p{Lu}+") is None
    assert translate_pattern(r"[^\S]") is None
    assert translate_pattern(r"\w+|\d") is None
    assert translate_pattern(r"'s|\s+(?!\S)\r\n") is not None
