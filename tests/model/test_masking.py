"""Causality and intra-document masking: what a token may see, checked through the logits."""

from __future__ import annotations

import pytest
import torch

from kiln.model import ModelConfig, Transformer

ATOL, RTOL = 1e-5, 1e-4
VARIANTS = [
    pytest.param("reordered", None, id="reordered-mha"),
    pytest.param("reordered", 2, id="reordered-gqa"),
    pytest.param("prenorm", None, id="prenorm-mha"),
    pytest.param("prenorm", 2, id="prenorm-gqa"),
]


def tiny_model(block: str, n_kv_heads: int | None) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=128,
                      block=block, max_seq_len=64)
    return Transformer(cfg).eval()


@pytest.mark.parametrize(("block", "n_kv_heads"), VARIANTS)
@torch.no_grad()
def test_changing_a_later_token_leaves_earlier_logits_alone(block: str, n_kv_heads: int | None) -> None:
    model = tiny_model(block, n_kv_heads)
    ids = torch.randint(0, 256, (2, 16))
    changed_at = 9
    edited = ids.clone()
    edited[:, changed_at] = (ids[:, changed_at] + 1) % 256
    before, after = model(ids), model(edited)
    torch.testing.assert_close(after[:, :changed_at], before[:, :changed_at], atol=0, rtol=0)
    # The edit is visible from its own position on, so the comparison above is not vacuous.
    assert not torch.allclose(after[:, changed_at:], before[:, changed_at:])


def packed_batch(first_len: int, second_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two documents packed into one row of ids, with their document ids."""
    ids = torch.randint(0, 256, (1, first_len + second_len))
    doc_ids = torch.tensor([[0] * first_len + [1] * second_len])
    return ids, doc_ids


def run_at_positions(model: Transformer, ids: torch.Tensor, start: int,
                     monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """Logits of `ids` alone, with plain causal attention, at RoPE positions start, start + 1, ..."""
    with monkeypatch.context() as patch:
        patch.setattr(model, "_positions", lambda B, T, begin, pad_mask, device:
                      torch.arange(start, start + T, device=device).expand(B, T))
        return model(ids)


@pytest.mark.parametrize(("block", "n_kv_heads"), VARIANTS)
@torch.no_grad()
def test_second_document_equals_running_it_alone(block: str, n_kv_heads: int | None,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Positions are global in the packed row (doc 2 sits at 5..11), but RoPE only sees relative positions,
    so doc 2 alone from position 0 must give the same logits as at 5..11 and as inside the packed row."""
    model = tiny_model(block, n_kv_heads)
    first, second = 5, 7
    ids, doc_ids = packed_batch(first, second)
    packed = model(ids, doc_ids=doc_ids)
    alone_from_zero = model(ids[:, first:])
    alone_at_packed_positions = run_at_positions(model, ids[:, first:], first, monkeypatch)
    torch.testing.assert_close(packed[:, first:], alone_at_packed_positions, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(packed[:, first:], alone_from_zero, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(packed[:, :first], model(ids[:, :first]), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("block", "n_kv_heads"), VARIANTS)
@torch.no_grad()
def test_no_attention_across_a_document_boundary(block: str, n_kv_heads: int | None) -> None:
    model = tiny_model(block, n_kv_heads)
    first = 6
    ids, doc_ids = packed_batch(first, 10)
    edited = ids.clone()
    edited[:, :first] = (ids[:, :first] + 1) % 256
    torch.testing.assert_close(model(edited, doc_ids=doc_ids)[:, first:], model(ids, doc_ids=doc_ids)[:, first:],
                               atol=0, rtol=0)
    # Without document ids the same edit does reach document 2: the mask is what keeps them apart.
    assert not torch.allclose(model(edited)[:, first:], model(ids)[:, first:])


@pytest.mark.parametrize(("block", "n_kv_heads"), VARIANTS)
@torch.no_grad()
def test_intra_document_masking_equals_each_document_alone(block: str, n_kv_heads: int | None,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Every document of every row, under intra-document masking, gives the logits it gives run alone.

    The model numbers positions across the whole packed row (a document at 9..15 has RoPE positions 9..15), so
    each reference runs its document alone at those same positions; the rows pack different boundaries,
    including a one-token document, so a mask shared across rows or off by one would show.
    """
    model = tiny_model(block, n_kv_heads)
    lengths = [[4, 1, 11], [9, 7]]  # documents per row, 16 tokens each
    ids = torch.randint(0, 256, (2, 16))
    doc_ids = torch.tensor([sum(([doc] * n for doc, n in enumerate(row)), []) for row in lengths])
    packed = model(ids, doc_ids=doc_ids)
    for row, row_lengths in enumerate(lengths):
        start = 0
        for n in row_lengths:
            alone = run_at_positions(model, ids[row:row + 1, start:start + n], start, monkeypatch)
            torch.testing.assert_close(packed[row:row + 1, start:start + n], alone, atol=ATOL, rtol=RTOL)
            start += n
