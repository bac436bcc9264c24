"""Batched autoregressive generation: left-padded prompts, an optional KV cache, greedy or sampled decoding.

Prompts of different lengths share one batch by left padding: every row's last prompt token sits in the same
column, `pad_mask` hides the padding from attention and positions count real tokens only, so each row decodes
as it would alone. The KV cache only avoids recomputation; decoding without it gives the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kiln.errors import KilnError
from kiln.model.transformer import KVCache, Transformer, prefix_lm_mask

PAD_ID = 0  # any valid id: padded positions are masked out of attention


def filter_top_k(logits: Tensor, k: int | None) -> Tensor:
    """Keep the `k` largest logits of each row (ties with the k-th are kept), the rest set to -inf."""
    if k is None or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus filter: keep the most probable tokens until their mass reaches `p` (always at least one)."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the strictly more likely tokens
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Next ids (B,) from logits (B, V): argmax at temperature 0, else a draw from the filtered softmax."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    filtered = filter_top_p(filter_top_k(logits.float() / temperature, top_k), top_p)
    return torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator).squeeze(-1)


class Decoder:
    """Next-token logits for a batch of left-padded sequences that grow one token per step.

    With `use_cache` the prompt is run once and each step feeds only the new token; without it every step
    reruns the whole sequence. Both see the same tokens, pad mask and positions. `prefix` (B, P, C) embeddings
    (a VLM's image tokens) come before each row, padding included, and are always attended to; with `prefix_lm`
    the prefix and the (left-padded, so equally long) prompts attend to each other both ways.
    """

    def __init__(self, model: Transformer, prompts_ids: list[list[int]], max_new_tokens: int,
                 use_cache: bool = True, prefix: Tensor | None = None, prefix_lm: bool = False) -> None:
        self.model, self.prefix, self.prefix_lm = model, prefix, prefix_lm
        self.prefix_len = 0 if prefix is None else prefix.shape[1]
        device = model.embed.weight.device
        self.prompt_len = max(len(ids) for ids in prompts_ids)
        total = self.prompt_len + max_new_tokens
        self.tokens = torch.full((len(prompts_ids), total), PAD_ID, dtype=torch.long, device=device)
        self.pad_mask = torch.zeros(len(prompts_ids), total, dtype=torch.bool, device=device)
        for row, ids in enumerate(prompts_ids):
            start = self.prompt_len - len(ids)
            self.tokens[row, start:self.prompt_len] = torch.tensor(ids, dtype=torch.long)
            self.pad_mask[row, start:] = True  # prompt and every generated position are real tokens
        self.length = self.prompt_len
        self.cache = None
        if use_cache:
            self.cache = KVCache(model.cfg, len(prompts_ids), self.prefix_len + total, device,
                                 model.embed.weight.dtype)

    def logits(self) -> Tensor:
        """(B, padded vocab) fp32 logits for the position after the current sequence."""
        mask = self.pad_mask[:, :self.length]
        if self.prefix_len:
            mask = torch.cat([mask.new_ones(len(mask), self.prefix_len), mask], dim=1)
        whole = self.cache is None or self.cache.length == 0  # every position goes through the model
        both_ways = self._prefix_lm_mask(mask) if self.prefix_lm and whole else None
        if self.cache is None:
            return self.model(self.tokens[:, :self.length], pad_mask=mask, prefix=self.prefix,
                              attn_mask=both_ways)[:, -1].float()
        cached = max(self.cache.length - self.prefix_len, 0)  # text positions already in the cache
        prefix = self.prefix if self.cache.length == 0 else None
        new_tokens = self.tokens[:, cached:self.length]
        return self.model(new_tokens, pad_mask=mask, cache=self.cache, prefix=prefix,
                          attn_mask=both_ways)[:, -1].float()

    def _prefix_lm_mask(self, pad_mask: Tensor) -> Tensor:
        """Prefix and prompts both ways, generated tokens causally; later cached steps see every earlier key."""
        inside = torch.full((len(pad_mask),), self.prefix_len + self.prompt_len, device=pad_mask.device)
        return prefix_lm_mask(inside, pad_mask.shape[1], pad_mask)

    def append(self, next_ids: Tensor) -> None:
        self.tokens[:, self.length] = next_ids
        self.length += 1

    def generated(self) -> list[list[int]]:
        return self.tokens[:, self.prompt_len:self.length].tolist()


@torch.inference_mode()
def generate(model: Transformer, prompts_ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             seed: int | None = None, use_cache: bool = True, vocab_size: int | None = None,
             prefix: Tensor | None = None, prefix_lm: bool = False) -> list[list[int]]:
    """The new tokens of each prompt: up to `max_new_tokens`, ending at (and including) `eos_id` if drawn.

    Ids at or past `vocab_size` (default the model's; pass the tokenizer's when smaller) are never produced:
    they are embedding padding rows. The same `seed` gives the same samples. `prefix` embeddings (B, P, C) precede
    each prompt (a VLM's image tokens); with `prefix_lm` they and the prompt attend to each other both ways.
    """
    cfg = model.cfg
    vocab_size = vocab_size or cfg.vocab_size
    _validate(prompts_ids, max_new_tokens, temperature, top_k, top_p, vocab_size, cfg.padded_vocab_size)
    longest = max(len(ids) for ids in prompts_ids) + max_new_tokens + (0 if prefix is None else prefix.shape[1])
    if longest > cfg.max_seq_len:
        raise KilnError(f"prefix + longest prompt + max_new_tokens = {longest} exceeds the model's max_seq_len "
                        f"{cfg.max_seq_len}")
    model.eval()
    # blocks compiled for training (trainer.compile) would recompile for every new cache length: decode eagerly
    with torch.compiler.set_stance("force_eager"):
        decoder = Decoder(model, prompts_ids, max_new_tokens, use_cache, prefix, prefix_lm)
        _decode(decoder, max_new_tokens, vocab_size, (temperature, top_k, top_p), eos_id, seed)
    return [_cut_at_eos(ids, eos_id) for ids in decoder.generated()]


def _decode(decoder: Decoder, max_new_tokens: int, vocab_size: int,
            sampling: tuple[float, int | None, float | None], eos_id: int | None, seed: int | None) -> None:
    """Append up to `max_new_tokens` tokens to every row, stopping once each has drawn `eos_id`."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=decoder.tokens.device).manual_seed(seed)
    finished = torch.zeros(decoder.tokens.shape[0], dtype=torch.bool, device=decoder.tokens.device)
    for _ in range(max_new_tokens):
        logits = decoder.logits()
        logits[:, vocab_size:] = float("-inf")
        next_ids = sample_next(logits, *sampling, generator)
        decoder.append(next_ids)
        if eos_id is not None:
            finished |= next_ids == eos_id
            if bool(finished.all()):
                break


def _cut_at_eos(ids: list[int], eos_id: int | None) -> list[int]:
    return ids[:ids.index(eos_id) + 1] if eos_id is not None and eos_id in ids else ids


def _validate(prompts_ids: list[list[int]], max_new_tokens: int, temperature: float, top_k: int | None,
              top_p: float | None, vocab_size: int, padded_vocab: int) -> None:
    if not prompts_ids or any(len(ids) == 0 for ids in prompts_ids):
        raise KilnError("every prompt needs at least one token; got an empty prompt or no prompts")
    if max_new_tokens < 0:
        raise KilnError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise KilnError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise KilnError(f"top_k must be >= 1 or unset, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise KilnError(f"top_p must be in (0, 1] or unset, got {top_p}")
    if not 0 < vocab_size <= padded_vocab:
        raise KilnError(f"vocab_size {vocab_size} must be in 1..{padded_vocab} (the model's embedding rows)")
    bad = sorted({i for ids in prompts_ids for i in ids if not 0 <= i < vocab_size})
    if bad:
        raise KilnError(f"prompt token ids {bad[:10]} are outside the vocabulary 0..{vocab_size - 1}")


def generate_text(model: Transformer, tokenizer, prompts: list[str], max_new_tokens: int = 64,
                  **sampling) -> list[str]:
    """Each prompt followed by its completion, as text: `generate` on the tokenizer's ids, stopping at its EOS.

    Prompt and completion are decoded together, so the tokenizer joins them as it would any text. `sampling` takes
    `generate`'s temperature, top_k, top_p, seed and use_cache, and eos_id (default: the tokenizer's).
    """
    from kiln.checkpoint import special_token_id

    prompts_ids = [tokenizer.encode(prompt).ids for prompt in prompts]
    eos_id = sampling.pop("eos_id", None)
    eos_id = special_token_id(tokenizer, "eos") if eos_id is None else eos_id
    vocab_size = min(model.cfg.vocab_size, tokenizer.get_vocab_size())
    outputs = generate(model, prompts_ids, max_new_tokens, eos_id=eos_id, vocab_size=vocab_size, **sampling)
    return [tokenizer.decode(ids + new, skip_special_tokens=False) for ids, new in zip(prompts_ids, outputs,
                                                                                        strict=True)]
