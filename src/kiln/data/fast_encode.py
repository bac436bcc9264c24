"""A faster encoder for byte-level BPE tokenizers, giving the same ids as `tokenizers` for the same text.

On the CPUs we measured, `Tokenizer.encode` spends most of its time in the pre-tokenizer's bookkeeping (offsets and
alignments for every word), reaching about 1 MB/s per core. Here the same split regex runs in Python's `re` and each
distinct word goes through the tokenizer's own BPE model once and is cached, about 5x faster. Only tokenizers whose
whole pipeline is understood are accepted (no normaliser, a GPT-2 or Split+ByteLevel pre-tokenizer, a plain BPE
model, added tokens without strip options); any other tokenizer, and any document the regex does not cover end to
end, goes through `tokenizers` unchanged. `\\p{L}`, `\\p{N}` and `\\s` are spelled out from Python's Unicode tables,
so characters assigned after that Unicode version may split differently than in the Rust library.
"""

from __future__ import annotations

import json
import re
import sys
import unicodedata
from functools import cache, cached_property, lru_cache

from tokenizers import Tokenizer

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
WHITE_SPACE = "\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"  # Unicode White_Space
ASTRAL = re.compile("[\U00010000-\U0010ffff]")
CACHE_LIMIT = 1 << 20  # distinct words remembered before the cache starts over


@cache
def _category_class(prefix: str, astral: bool) -> str:
    """The inside of a `[...]` class matching every code point whose general category starts with `prefix`.

    Without the astral planes (above U+FFFF) `re` compiles the class into one lookup table; with them it also walks a
    list of ranges for every character, which is several times slower, so those are kept for text that needs them.
    """
    top = sys.maxunicode if astral else 0xFFFF
    ranges, start = [], None
    for code in range(top + 2):
        inside = code <= top and unicodedata.category(chr(code)).startswith(prefix)
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append(re.escape(chr(start)) + ("" if code - 1 == start else "-" + re.escape(chr(code - 1))))
            start = None
    return "".join(ranges)


def translate_pattern(pattern: str, astral: bool = True) -> str | None:
    """The Oniguruma pattern in Python `re` syntax, or None when it uses something not translated here.

    `astral=False` gives a faster pattern that is exact only for text without characters above U+FFFF.
    """
    classes = {r"\p{L}": _category_class("L", astral), r"\p{N}": _category_class("N", astral), r"\s": WHITE_SPACE}
    out, in_class, i = [], False, 0
    while i < len(pattern):
        if pattern.startswith(r"\p{", i) and pattern[i:i + 5] not in classes:
            return None
        token = next((t for t in (*classes, r"\S") if pattern.startswith(t, i)), None)
        if token == r"\S":
            if in_class:
                return None
            out.append(f"[^{WHITE_SPACE}]")
        elif token:
            out.append(classes[token] if in_class else f"[{classes[token]}]")
        else:
            token = pattern[i:i + 2] if pattern[i] == "\\" else pattern[i]
            if len(token) == 2 and token[1].isalnum() and token[1] not in "rnt":
                return None  # \d, \w, \b, \h ...: their Unicode meaning differs between engines
            in_class = (token == "[" or in_class) and token != "]"
            out.append(token)
        i += len(token)
    return "".join(out)


class FastEncoder:
    """Encodes documents like `tok.encode(text, add_special_tokens=False)` with special tokens kept as plain text."""

    def __init__(self, tok: Tokenizer, pattern: str, added: dict[str, int]):
        self.tok, self.model, self.source_pattern = tok, tok.model, pattern
        self.bmp_pattern = re.compile(translate_pattern(pattern, astral=False))
        self.added = added
        self.added_pattern = re.compile("(" + "|".join(map(re.escape, sorted(added, key=len, reverse=True))) + ")") \
            if added else None
        self.byte_chars = str.maketrans({b: ch for b, ch in enumerate(_bytes_to_unicode())})
        self.cache: dict[str, list[int]] = {}

    @cached_property
    def pattern(self) -> re.Pattern:
        """The pattern for text with characters above U+FFFF, compiled on first need (it takes most of a second)."""
        return re.compile(translate_pattern(self.source_pattern))

    @classmethod
    def build(cls, tok: Tokenizer) -> FastEncoder | None:
        """A fast encoder for `tok`, or None when its pipeline is not one this module reproduces exactly."""
        spec = json.loads(tok.to_str())
        model = spec.get("model") or {}
        if spec.get("normalizer") or spec.get("truncation") or spec.get("padding") or model.get("type") != "BPE":
            return None
        if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            return None
        pattern = _split_pattern(spec.get("pre_tokenizer") or {})
        added = {}
        for token in spec.get("added_tokens", []):
            if token["single_word"] or token["lstrip"] or token["rstrip"]:
                return None
            if not token["special"]:
                added[token["content"]] = token["id"]
        translated = translate_pattern(pattern, astral=False) if pattern else None
        try:
            return cls(tok, pattern, added) if translated and re.compile(translated) else None
        except re.error:  # a construct Python's `re` lacks
            return None

    def encode(self, text: str) -> list[int]:
        if self.added_pattern is None:
            return self._encode_plain(text)
        ids: list[int] = []
        for index, part in enumerate(self.added_pattern.split(text)):
            if index % 2:
                ids.append(self.added[part])
            elif part:
                ids.extend(self._encode_plain(part))
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        pattern = self.bmp_pattern if ASTRAL.search(text) is None else self.pattern
        words = pattern.findall(text)
        if sum(map(len, words)) != len(text):  # the regex skipped something: let the library decide
            return self.tok.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        cache = self.cache
        for word in words:
            word_ids = cache.get(word)
            if word_ids is None:
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                mapped = word.encode("utf-8").decode("latin-1").translate(self.byte_chars)
                word_ids = cache[word] = [token.id for token in self.model.tokenize(mapped)]
            ids.extend(word_ids)
        return ids


def _split_pattern(pre_tokenizer: dict) -> str | None:
    """The one regex whose matches are the words: GPT-2's ByteLevel, or Split(keep matches) then ByteLevel."""
    if pre_tokenizer.get("type") == "ByteLevel":
        return GPT2_PATTERN if pre_tokenizer.get("use_regex") and not pre_tokenizer.get("add_prefix_space") else None
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" else []
    if len(steps) != 2 or steps[0].get("type") != "Split" or steps[1].get("type") != "ByteLevel":
        return None
    split, byte_level = steps
    keeps_matches = split.get("behavior") == "Removed" and split.get("invert")
    if not keeps_matches or byte_level.get("use_regex") or byte_level.get("add_prefix_space"):
        return None
    return split.get("pattern", {}).get("Regex")


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]
