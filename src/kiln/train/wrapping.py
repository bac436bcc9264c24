"""Wrappers applied to a built model from the outside: activation checkpointing and regional compilation.

Both act on each transformer block, in the order torchtitan applies them (checkpointing, then compile, then
FSDP's sharding in `kiln.distributed`), and leave parameter names (and so checkpoints) unchanged.
"""

from __future__ import annotations

import functools

from torch import nn
from torch.utils.checkpoint import checkpoint


def apply_activation_checkpointing(model: nn.Module, every: int = 1) -> None:
    """Recompute every `every`-th block (0, k, 2k, ...) in the backward pass, trading compute for activation
    memory (torchtitan's selective per-layer mode; 1 = every block).

    The block's forward is replaced on the instance, so parameter names (and checkpoints) are unchanged.
    """
    if every < 1:
        raise ValueError(f"every must be 1 or more blocks, got {every}")
    for block in list(model.blocks)[::every]:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)


def compile_blocks(model: nn.Module) -> None:
    """torch.compile each transformer block on its own (regional compilation, as torchtitan does): the blocks
    share one compiled graph, so compile time does not grow with depth, and FSDP's hooks between blocks need no
    whole-model graph."""
    for block in model.blocks:
        block.compile()


def set_activation_memory_budget(budget: float) -> None:
    """Let the compiler choose which activations of each compiled block to recompute, keeping about `budget`
    (0-1) of what it would save without recomputation (torch's activation memory budget, as OLMo-core's
    "budget" mode). It takes effect only on compiled code."""
    import torch._functorch.config as functorch_config  # not loaded by `import torch`

    if not 0 <= budget <= 1:
        raise ValueError(f"budget must be in [0, 1], got {budget}")
    functorch_config.activation_memory_budget = budget
