"""The chunked output projection + loss equals the full-logits loss, in value and in both gradients."""

from __future__ import annotations

import pytest
import torch

from kiln.train.loss import IGNORE_INDEX, chunked_loss_terms, loss_terms


def _inputs(dtype=torch.float64, B=2, T=7, C=16, V=53, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g, dtype=dtype, requires_grad=True)
    weight = torch.randn(V, C, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = IGNORE_INDEX  # a prompt the loss skips
    return hidden, weight, labels


# (2, 2) is the training step's (ce + z) x world size, whose gradients the forward pass computes ahead; any other
# pair makes the backward recompute them.
@pytest.mark.parametrize("chunk", [1, 3, 14, 100])
@pytest.mark.parametrize("ce_scale,z_scale", [(2.0, 2.0), (1.0, 3.0)])
def test_chunked_loss_and_gradients_equal_the_full_logits_path_in_float64(chunk, ce_scale, z_scale):
    hidden, weight, labels = _inputs()
    n = int((labels != IGNORE_INDEX).sum()) + 2  # the step's count may exceed this micro-batch's
    ce, z = loss_terms(hidden @ weight.t(), labels, n, z_weight=0.1)
    (ce_scale * ce + z_scale * z).backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ce_c, z_c, logit_max = chunked_loss_terms(hidden, weight, labels, n, 0.1, chunk)
    (ce_scale * ce_c + z_scale * z_c).backward()
    assert torch.allclose(ce_c.double(), ce.double(), rtol=1e-6) and torch.allclose(z_c.double(), z.double(), rtol=1e-6)
    assert torch.allclose(hidden.grad, expected[0], rtol=1e-6, atol=1e-9)
    assert torch.allclose(weight.grad, expected[1], rtol=1e-6, atol=1e-9)
    assert hidden.grad[0, :3].abs().max() == 0  # ignored rows get no gradient
    assert torch.isclose(logit_max, (hidden @ weight.t()).abs().max(), rtol=1e-9)  # ignored rows count too


def test_the_loss_matches_torch_cross_entropy_and_a_hand_z_loss():
    hidden, weight, labels = _inputs()
    logits = (hidden @ weight.t()).flatten(0, 1)
    keep = labels.flatten() != IGNORE_INDEX
    n = int(keep.sum())
    ce, z, _ = chunked_loss_terms(hidden, weight, labels, n, 1e-4, chunk=5)
    reference = torch.nn.functional.cross_entropy(logits, labels.flatten(), ignore_index=IGNORE_INDEX)
    assert torch.allclose(ce.double(), reference, rtol=1e-6)
    assert torch.allclose(z.double(), 1e-4 * torch.logsumexp(logits[keep], -1).pow(2).mean(), rtol=1e-6)


def test_a_chunk_below_one_row_is_refused():
    hidden, weight, labels = _inputs()
    with pytest.raises(ValueError, match="got 0"):
        chunked_loss_terms(hidden, weight, labels, 1, 0.0, chunk=0)


def test_bf16_inputs_get_bf16_gradients_close_to_the_full_path():
    hidden, weight, labels = _inputs(dtype=torch.bfloat16)
    ce, z = loss_terms(hidden @ weight.t(), labels, 11, 1e-4)
    (ce + z).backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ce_c, z_c, _ = chunked_loss_terms(hidden, weight, labels, 11, 1e-4, chunk=4)
    (ce_c + z_c).backward()
    assert ce_c.dtype == torch.float32 and hidden.grad.dtype == weight.grad.dtype == torch.bfloat16
    assert torch.allclose(ce_c, ce, rtol=1e-2)
    assert torch.allclose(hidden.grad.float(), expected[0].float(), rtol=5e-2, atol=2e-3)
    assert torch.allclose(weight.grad.float(), expected[1].float(), rtol=5e-2, atol=2e-3)


def test_without_gradients_the_forward_computes_none(monkeypatch):
    import kiln.train.loss as loss

    calls = []
    monkeypatch.setattr(loss, "_add_block_grads", lambda *args: calls.append(args))
    hidden, weight, labels = _inputs()
    with torch.no_grad():
        ce, z, _ = chunked_loss_terms(hidden, weight, labels, 11, 1e-4, chunk=4)
    assert not ce.requires_grad and calls == []
    assert torch.allclose(ce, loss_terms(hidden.detach() @ weight.detach().t(), labels, 11, 1e-4)[0])


def test_under_bf16_autocast_the_chunked_loss_tracks_the_autocast_linear_and_keeps_fp32_gradients():
    hidden, weight, labels = _inputs(dtype=torch.float32, B=2, T=16, C=32, V=97)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce, z = loss_terms(torch.nn.functional.linear(hidden, weight), labels, 29, 1e-4)
    (ce + z).backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ce_c, z_c, _ = chunked_loss_terms(hidden, weight, labels, 29, 1e-4, chunk=5)
    (ce_c + z_c).backward()
    assert hidden.grad.dtype == weight.grad.dtype == torch.float32
    assert torch.allclose(ce_c, ce, rtol=1e-3)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(weight.grad, expected[1], rtol=2e-2, atol=2e-3)
