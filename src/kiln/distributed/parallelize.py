"""DDP, FSDP2 and HSDP wrapping of a built Transformer: the one place where parallelism touches the model.

FSDP2 (`fully_shard`) is applied to every transformer block and then to the root, so one block's weights are
gathered at a time; it keeps parameter names, and the `torch.distributed.checkpoint.state_dict` helpers strip
DDP's `module.` prefix, so checkpoints are named alike under every strategy and reshard between them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from kiln.distributed.setup import world_size
from kiln.errors import KilnError

if TYPE_CHECKING:
    from kiln.model.transformer import Transformer
    from kiln.train.config import DistributedConfig

STRATEGIES = ("none", "ddp", "fsdp", "hsdp")


def resolve_strategy(strategy: str, ranks: int) -> str:
    """`auto` is no wrapping on one process and FSDP2 on several; `none` cannot run on several."""
    if strategy == "auto":
        return "fsdp" if ranks > 1 else "none"
    if strategy not in STRATEGIES:
        raise KilnError(f"distributed.strategy={strategy!r} is not one of auto, {', '.join(STRATEGIES)}")
    if strategy == "none" and ranks > 1:
        raise KilnError(f"distributed.strategy=none but {ranks} processes were launched; use ddp, fsdp or hsdp")
    return strategy


def parallelize(model: Transformer, strategy: str, device: torch.device, precision: str,
                cfg: DistributedConfig) -> nn.Module:
    """Wrap `model` for data parallelism; returns the module to call (DDP's wrapper, or the model sharded in place).

    With FSDP and bf16, parameters are gathered and computed in bf16 while gradients are reduced in fp32 and the
    optimizer keeps fp32 shards, so no autocast is needed. Blocks compiled one by one (kiln.train.wrapping) are
    sharded as they are: FSDP's hooks sit between their graphs.
    """
    if strategy == "none":
        return model
    if strategy == "ddp":
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    mesh = data_parallel_mesh(strategy, device.type, cfg.shard_size)
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=cfg.reshard_after_forward)
    return model


def data_parallel_mesh(strategy: str, device_type: str, shard_size: int | None) -> DeviceMesh:
    """1-D ("shard",) for FSDP; 2-D ("replicate", "shard") for HSDP, sharding within groups of `shard_size` ranks."""
    ranks = world_size()
    if strategy == "fsdp":
        return init_device_mesh(device_type, (ranks,), mesh_dim_names=("shard",))
    shard = shard_size or int(os.environ.get("LOCAL_WORLD_SIZE", ranks))
    if shard < 1 or ranks % shard:
        valid = [d for d in range(1, ranks + 1) if ranks % d == 0]
        raise KilnError(f"distributed.shard_size={shard} must divide the {ranks} ranks; valid sizes: {valid}")
    return init_device_mesh(device_type, (ranks // shard, shard), mesh_dim_names=("replicate", "shard"))


def grad_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """DDP skips the all-reduce of all but the last micro-batch. FSDP reduce-scatters every one: skipping would
    keep whole unsharded gradients, the memory FSDP exists to save."""
    if not enabled and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(parameters: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip to `max_norm` and return the norm of the whole gradient, also when FSDP holds it as sharded DTensors."""
    norm = torch.nn.utils.clip_grad_norm_(list(parameters), max_norm, foreach=True)
    return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP DTensor; a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def sum_over_shards(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum per-rank partial sums (e.g. squared norms of local shards) over the mesh dimensions that shard `like`.

    FSDP shards along ("shard",); HSDP's replicas along ("replicate",) hold the same shard and are not summed.
    A tensor that is not a DTensor (one process, DDP) is whole on every rank: `values` is returned unchanged.
    """
    if not isinstance(like, DTensor):
        return values
    for dim, placement in enumerate(like.placements):
        if placement.is_shard():
            torch.distributed.all_reduce(values, group=like.device_mesh.get_group(dim))
    return values


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside DDP's and torch.compile's wrappers (FSDP2 shards in place and wraps nothing)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, DistributedDataParallel) else model
