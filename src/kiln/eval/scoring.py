"""Log-likelihoods of (context, continuation) pairs, each distinct context run through the model once.

Tokenisation follows lm-evaluation-harness (`_encode_pair`, which oe-eval inherits): trailing spaces of the
context move to the continuation, the pair is encoded whole and split after the context's own tokens. A prefix
token (the document separator the model was trained with) goes first, as OLMo's evaluator prepends BOS.

Speed: pairs are grouped by context, so a context runs through the model once for all its continuations, in one
of two ways. Contexts that begin alike (a task's fixed few-shot examples, the two halves of a Winogrande sentence)
are batched together and take the KV-cache path: their common token prefix runs once per batch, the rest of each
context continues from copies of that cache (left-padded, so the pad sits between prefix and rest; positions come
from the pad mask and stay exact), and every continuation continues from copies of that, in chunks of similar
length. Other contexts run packed: one row holds the context and then all its continuations, each seeing the
context and itself but not the others, with positions restarting after the context; rows are sorted by length.
Single-token continuations (MC's " A") add no tokens at all. Ranks of a sharded model always take the cache path,
whose number of forward calls per batch is fixed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_CONTINUATIONS_PER_GROUP = 64  # the shared unconditional context "Answer:" would otherwise gather thousands
CONTINUATION_TOKENS_PER_CONTEXT_TOKEN, MIN_CONTINUATION_TOKENS = 4, 128  # see `_split`
SHARED_PREFIX = 32  # contexts whose first this many tokens agree are batched together and share their prefix


@dataclass(frozen=True)
class Encoded:
    """A pair as token ids: the prefix-led context and the continuation."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass
class Score:
    """Sum of log-probabilities of a continuation's tokens, their count, and whether its context was cut."""

    logprob: float
    tokens: int
    truncated: bool


class PairEncoder:
    """Encodes (context, continuation) strings the way lm-eval does, caching context encodings."""

    def __init__(self, encode_batch: Callable[[list[str]], list[list[int]]], prefix_id: int | None) -> None:
        self.encode_batch = encode_batch
        self.prefix = [] if prefix_id is None else [prefix_id]

    def encode(self, pairs: list[tuple[str, str]]) -> list[Encoded]:
        """Every pair encoded; the continuation must contribute at least one token."""
        moved = [_move_trailing_spaces(ctx, cont) for ctx, cont in pairs]
        contexts = self.encode_batch([ctx for ctx, _ in moved])
        wholes = self.encode_batch([ctx + cont for ctx, cont in moved])
        out = []
        for (ctx, cont), ctx_ids, whole in zip(moved, contexts, wholes):
            cont_ids = whole[len(ctx_ids):]
            if not cont_ids:
                raise ValueError(f"continuation {cont!r} after {ctx[-40:]!r} encodes to no tokens")
            out.append(Encoded(tuple(self.prefix + ctx_ids), tuple(cont_ids)))
        return out


def _move_trailing_spaces(context: str, continuation: str) -> tuple[str, str]:
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


@dataclass
class _Group:
    context: tuple[int, ...]  # what the model sees: `original`, cut from the left if it had to be
    continuations: list[tuple[int, ...]]
    original: tuple[int, ...]


class Backend:
    """What the scorer needs of a model: run left-padded prompts once, then continue copies of them."""

    max_length: int
    device: torch.device

    def prefill(self, ids: Tensor, pad: Tensor, extra: int) -> tuple[Tensor, object]:
        """Last-position logits (B, V) of left-padded `ids` and a cache with room for `extra` more tokens."""
        raise NotImplementedError

    def packed(self, ids: Tensor, positions: Tensor, mask: Tensor) -> Tensor:
        """Logits (B, T, V) of rows that each hold a prompt and its continuations, with explicit positions and a
        boolean (B, 1, T, T) attention mask."""
        raise NotImplementedError

    def extend(self, state: object, rows: Tensor, ids: Tensor, pad: Tensor,
               last_only: bool = False) -> tuple[Tensor, object]:
        """Logits (N, T, V) of `ids` continuing prompt `rows[i]` (`pad` covers prompt + new tokens) and the cache
        that now holds them; with `last_only`, logits (N, V) of the last position."""
        raise NotImplementedError


class Scorer:
    """Scores encoded pairs in length-sorted batches of at most `batch_size` contexts."""

    def __init__(self, backend: Backend, batch_size: int = 16, token_budget: int = 16384) -> None:
        self.backend = backend
        self.batch_size = batch_size
        self.token_budget = token_budget

    def score(self, pairs: Iterable[Encoded], progress: Callable[[int], None] | None = None,
              sync: Callable[[int], int] | None = None) -> dict[Encoded, Score]:
        """A Score for every distinct pair; `progress(n)` is told how many pairs each batch finished.

        With `sync` (ranks of a sharded model: it returns the most batches any rank has), every batch makes exactly
        three forward calls and ranks with fewer batches make empty ones, so all ranks call forward equally often.
        """
        batches = list(self._batches(self._groups(set(pairs)), packing=sync is None))
        most = sync(len(batches)) if sync else len(batches)  # agreed before any forward call
        results: dict[Encoded, Score] = {}
        for batch in batches:
            results.update(self._score_batch(batch, lockstep=sync is not None))
            if progress is not None:
                progress(sum(len(g.continuations) for g in batch))
        for _ in range(most - len(batches)):
            self._idle_batch()
        return results

    def _idle_batch(self) -> None:
        """The three forward calls of a batch, on one token each: keeps a rank in step with the others."""
        _, state = self.backend.prefill(*self._one_token(), 2)
        self._idle_extend(self._idle_extend(state, 2), 3)

    def _one_token(self, width: int = 1) -> tuple[Tensor, Tensor]:
        device = self.backend.device
        return (torch.zeros(1, 1, dtype=torch.long, device=device),
                torch.ones(1, width, dtype=torch.bool, device=device))

    def _idle_extend(self, state: object, width: int) -> object:
        ids, pad = self._one_token(width)
        return self.backend.extend(state, torch.zeros(1, dtype=torch.long, device=ids.device), ids, pad)[1]

    def _groups(self, pairs: set[Encoded]) -> list[_Group]:
        """Pairs grouped by context. A pair too long for the model gets a group of its own whose context is cut
        from the left just enough (as lm-eval and OLMo cut each pair), so it is scored exactly as they score it."""
        by_context: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        groups = []
        for pair in sorted(pairs, key=lambda p: (p.context, p.continuation)):
            room = self.backend.max_length - (len(pair.continuation) - 1)
            if len(pair.context) > room:
                groups.append(_Group(pair.context[len(pair.context) - max(room, 1):], [pair.continuation],
                                     pair.context))
            else:
                by_context.setdefault(pair.context, []).append(pair.continuation)
        groups += [_Group(ctx, part, ctx) for ctx, conts in by_context.items() for part in _split(ctx, conts)]
        return groups

    def _batches(self, groups: list[_Group], packing: bool = True) -> Iterable[list[_Group]]:
        """Length-sorted batches; groups whose contexts begin alike are batched only with each other. The others
        are sorted by the length of their packed row (context and all continuations) when they will run packed."""
        alike: dict[tuple[int, ...], list[_Group]] = {}
        for group in groups:
            alike.setdefault(group.context[:SHARED_PREFIX], []).append(group)
        loners = [g for key, gs in alike.items() if len(gs) == 1 or len(key) < SHARED_PREFIX for g in gs]
        for family in (gs for key, gs in alike.items() if len(gs) > 1 and len(key) == SHARED_PREFIX):
            yield from self._length_sorted_batches(family, _span, _cached_rows)
        yield from self._length_sorted_batches(loners, *((_packed_length, _packed_rows) if packing else
                                                        (_span, _cached_rows)))

    def _length_sorted_batches(self, groups: list[_Group], size: Callable[[_Group], int],
                               rows: Callable[[_Group], int]) -> Iterable[list[_Group]]:
        """At most `batch_size` groups, and their rows x the longest `size` within the token budget."""
        batch: list[_Group] = []
        for group in sorted(groups, key=lambda g: -size(g)):
            n_rows = sum(map(rows, batch)) + rows(group)
            if batch and (len(batch) >= self.batch_size or n_rows * size(batch[0]) > self.token_budget):
                yield batch
                batch = []
            batch.append(group)
        if batch:
            yield batch

    def _score_batch(self, batch: list[_Group], lockstep: bool = False) -> dict[Encoded, Score]:
        """Contexts that share a long prefix run through the KV cache (the prefix once); others run packed, each
        context followed by all its continuations in one row. Sharded ranks always take the cache path."""
        contexts = [g.context for g in batch]
        shared = min(len(os.path.commonprefix(contexts)), min(map(len, contexts)) - 1)  # leave each one token
        if lockstep or (len(batch) > 1 and shared >= SHARED_PREFIX):
            return self._score_cached(batch, shared, lockstep)
        return self._score_packed(batch)

    def _score_packed(self, batch: list[_Group]) -> dict[Encoded, Score]:
        rows = [_pack(g) for g in batch]
        width = max(len(ids) for ids, _, _ in rows)
        device = self.backend.device
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        positions = torch.zeros_like(ids)
        segments = torch.full_like(ids, -1)  # 0: context, j: continuation j, -1: padding
        for r, (row_ids, row_positions, row_segments) in enumerate(rows):
            n = len(row_ids)
            ids[r, :n], positions[r, :n] = torch.tensor(row_ids), torch.tensor(row_positions)
            segments[r, :n] = torch.tensor(row_segments)
        logits = self.backend.packed(ids, positions, _packed_mask(segments))
        where, targets, owners, keys = [], [], [], []  # per scored token: (row, position), its target, its pair
        for r, group in enumerate(batch):
            start = len(group.context)
            for cont in group.continuations:
                # the context's last position predicts the first token; the continuation's own tokens the rest
                where += [(r, len(group.context) - 1)] + [(r, start + t) for t in range(len(cont) - 1)]
                start += len(cont) - 1
                targets += cont
                owners += [len(keys)] * len(cont)
                keys.append((Encoded(group.original, cont), group.context != group.original))
        index = torch.tensor(where, device=device)
        picked = F.log_softmax(logits[index[:, 0], index[:, 1]].float(), dim=-1)
        scored = picked.gather(-1, torch.tensor(targets, device=device)[:, None])[:, 0]
        sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
        sums.index_add_(0, torch.tensor(owners, device=device), scored.double())
        return {pair: Score(value, len(pair.continuation), cut) for (pair, cut), value in zip(keys, sums.tolist())}

    def _score_cached(self, batch: list[_Group], shared: int, lockstep: bool = False) -> dict[Encoded, Score]:
        longest_cont = max(len(c) for g in batch for c in g.continuations)
        last_logits, state, pad = self._run_contexts([g.context for g in batch], shared, max(longest_cont - 1, 1),
                                                     lockstep)
        first = F.log_softmax(last_logits.float(), dim=-1)
        rows = [(i, cont) for i, g in enumerate(batch) for cont in g.continuations]
        rest = self._continue(state, rows, pad, lockstep) if longest_cont > 1 or lockstep else None
        out = {}
        for r, (i, cont) in enumerate(rows):
            logprob = first[i, cont[0]].item()
            if len(cont) > 1:
                logprob += rest[r, : len(cont) - 1].sum().item()
            group = batch[i]
            out[Encoded(group.original, cont)] = Score(logprob, len(cont), group.context != group.original)
        return out

    def _run_contexts(self, contexts: list[tuple[int, ...]], shared: int, extra: int,
                      lockstep: bool) -> tuple[Tensor, object, Tensor]:
        """Last-position logits of every context, the cache holding them, and its pad mask. Their common prefix
        (`shared` tokens) runs once; in lockstep (sharded ranks) this is always two forward calls."""
        if shared < SHARED_PREFIX and not (lockstep and shared > 0):
            ids, pad = _left_pad(contexts, self.backend.device)
            last_logits, state = self.backend.prefill(ids, pad, extra)
            if lockstep:  # stands for the shared path's second call (the rest of the contexts)
                self.backend.prefill(*self._one_token(), 1)
            return last_logits, state, pad
        device = self.backend.device
        rest, rest_pad = _left_pad([c[shared:] for c in contexts], device)
        prefix = torch.tensor([contexts[0][:shared]], device=device)
        _, state = self.backend.prefill(prefix, torch.ones_like(prefix, dtype=torch.bool), rest.shape[1] + extra)
        pad = torch.cat([torch.ones(len(contexts), shared, dtype=torch.bool, device=device), rest_pad], dim=1)
        rows = torch.zeros(len(contexts), dtype=torch.long, device=device)
        last_logits, state = self.backend.extend(state, rows, rest, pad, last_only=True)
        return last_logits, state, pad

    def _continue(self, state: object, rows: list[tuple[int, tuple[int, ...]]], ctx_pad: Tensor,
                  lockstep: bool = False) -> Tensor:
        """Log-probabilities (N, L-1) of continuation tokens 2..L, zero past each continuation's end. Rows run in
        chunks of similar length, so short continuations are not padded to the longest (one call in lockstep)."""
        width = max(max(len(cont) for _, cont in rows) - 1, 1)
        out = torch.zeros(len(rows), width, device=self.backend.device)
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r][1]))
        for chunk in [order] if lockstep else _length_chunks(order, [len(rows[r][1]) for r in order]):
            logprobs = self._continue_rows(state, [rows[r] for r in chunk], ctx_pad)
            out[chunk, : logprobs.shape[1]] = logprobs
        return out

    def _continue_rows(self, state: object, rows: list[tuple[int, tuple[int, ...]]], ctx_pad: Tensor) -> Tensor:
        device = self.backend.device
        width = max(max(len(cont) for _, cont in rows) - 1, 1)
        inputs = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        targets = torch.zeros_like(inputs)
        real = torch.zeros_like(inputs, dtype=torch.bool)
        for r, (_, cont) in enumerate(rows):
            n = len(cont) - 1
            inputs[r, :n] = torch.tensor(cont[:-1], device=device)
            targets[r, :n] = torch.tensor(cont[1:], device=device)
            real[r, :n] = True
        index = torch.tensor([i for i, _ in rows], device=device)
        pad = torch.cat([ctx_pad[index], real], dim=1)
        logits, _ = self.backend.extend(state, index, inputs, pad)
        logprobs = F.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0]
        return torch.where(real, logprobs, 0.0)


def _length_chunks(order: list[int], lengths: list[int], keep: float = 0.75) -> list[list[int]]:
    """Rows sorted by falling length, split where a row is clearly shorter (under `keep`, and by more than a few
    tokens) than the first of its chunk: the padding each chunk carries stays small."""
    chunks: list[list[int]] = []
    first = 0
    for row, length in zip(order, lengths):
        if not chunks or length < keep * first - 2:
            chunks.append([])
            first = length
        chunks[-1].append(row)
    return chunks


def _pack(group: _Group) -> tuple[list[int], list[int], list[int]]:
    """A context and, after it, every continuation but its last token: ids, positions and segments."""
    ids, n = list(group.context), len(group.context)
    positions, segments = list(range(n)), [0] * n
    for j, cont in enumerate(group.continuations, 1):
        ids += cont[:-1]
        positions += range(n, n + len(cont) - 1)
        segments += [j] * (len(cont) - 1)
    return ids, positions, segments


def _packed_mask(segments: Tensor) -> Tensor:
    """(B, 1, T, T): a token sees earlier tokens of the context and of its own segment; each sees itself."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    key, query = segments[:, None, :], segments[:, :, None]
    visible = causal & (key != -1) & ((key == 0) | (key == query))
    return (visible | torch.eye(T, dtype=torch.bool, device=segments.device))[:, None]


def _split(context: tuple[int, ...], continuations: list[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
    """A context's continuations in parts small enough for one packed row: attention cost grows with the square
    of a row, so a short context shared by hundreds of continuations (PMI's "Answer:") is repeated instead."""
    budget = max(CONTINUATION_TOKENS_PER_CONTEXT_TOKEN * len(context), MIN_CONTINUATION_TOKENS)
    parts: list[list[tuple[int, ...]]] = [[]]
    used = 0
    for cont in continuations:
        if parts[-1] and (used + len(cont) > budget or len(parts[-1]) >= MAX_CONTINUATIONS_PER_GROUP):
            parts.append([])
            used = 0
        parts[-1].append(cont)
        used += len(cont)
    return parts


def _span(group: _Group) -> int:
    return len(group.context) + max(map(len, group.continuations))


def _packed_length(group: _Group) -> int:
    return len(group.context) + sum(len(c) - 1 for c in group.continuations)


def _cached_rows(group: _Group) -> int:
    """Rows a group takes on the cache path: one per continuation."""
    return len(group.continuations)


def _packed_rows(group: _Group) -> int:
    """Rows a group takes packed: one."""
    return 1


def _left_pad(seqs: list[tuple[int, ...]], device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    pad = torch.zeros(len(seqs), width, dtype=torch.bool, device=device)
    for i, seq in enumerate(seqs):
        ids[i, width - len(seq):] = torch.tensor(seq, device=device)
        pad[i, width - len(seq):] = True
    return ids, pad


def bits_per_byte(logprob: float, text: str) -> float:
    """Bits per UTF-8 byte of `text` given its natural-log probability."""
    return -logprob / math.log(2) / max(len(text.encode("utf-8")), 1)
