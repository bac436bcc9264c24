"""Sample prompts drawn from the data itself, so a run on any corpus is shown continuing text of its own kind."""

from __future__ import annotations

import numpy as np
from tokenizers import Tokenizer

from kiln.data.splits import SplitView

SCAN_TOKENS = 1 << 16  # enough of a split's start to find the first few documents


def opening_prompts(views: list[SplitView], tokenizer: Tokenizer, eos_id: int, count: int,
                    words: int = 4) -> list[str]:
    """The first `words` words of the first `count` documents found at the start of the views."""
    prompts: list[str] = []
    for view in views:
        tokens = view.read(0, min(view.num_tokens, SCAN_TOKENS))
        for start in np.concatenate([[0], np.flatnonzero(tokens == eos_id) + 1]).tolist():
            opening = " ".join(tokenizer.decode(tokens[start:start + 8 * words].tolist()).split()[:words])
            if opening:
                prompts.append(opening)
            if len(prompts) == count:
                return prompts
    return prompts
