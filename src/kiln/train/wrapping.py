"""Wrappers applied to a built model from the outside: activation checkpointing (recompute in backward)."""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each transformer block in the backward pass, trading compute for activation memory.

    The block's forward is replaced on the instance, so parameter names (and checkpoints) are unchanged.
    """
    for block in model.blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
