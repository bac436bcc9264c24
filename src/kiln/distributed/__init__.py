"""Data parallelism from the outside of the model: process groups, DDP / FSDP2 / HSDP wrapping, cross-rank sums.

The model files know nothing of this; `kiln.train` calls `init_distributed`, then `parallelize` on a built model.
"""

from kiln.distributed.parallelize import (
    clip_grad_norm,
    grad_sync,
    local_part,
    parallelize,
    resolve_strategy,
    sum_over_shards,
    unwrap,
)
from kiln.distributed.setup import (
    background_group,
    barrier,
    exit_together,
    gather_objects,
    init_distributed,
    is_rank0,
    launched_ranks,
    local_rank,
    max_across_ranks,
    pick_device,
    rank,
    shutdown_distributed,
    sum_across_ranks,
    world_size,
)

__all__ = ["background_group", "barrier", "clip_grad_norm", "exit_together", "gather_objects", "grad_sync",
           "init_distributed", "is_rank0", "launched_ranks", "local_part", "local_rank", "max_across_ranks",
           "parallelize", "pick_device", "rank", "resolve_strategy", "shutdown_distributed", "sum_across_ranks",
           "sum_over_shards", "unwrap", "world_size"]
