"""Joining the process group torchrun describes, cross-rank sums, and exiting together when one rank fails."""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from kiln.errors import KilnError

_FAILURES_KEY = "kiln/failed_ranks"
_background_groups: dict[int, dist.ProcessGroup] = {}


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def launched_ranks() -> int:
    """How many processes torchrun started for this job (WORLD_SIZE; 1 without torchrun), readable before the
    process group is joined."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_rank0() -> bool:
    return rank() == 0


def pick_device(name: str, option: str = "trainer.device") -> torch.device:
    """`auto` and `cuda` mean this process's GPU: torchrun's LOCAL_RANK picks it among the node's.

    `option` is how the user spelled the setting, so an error names what to change."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise KilnError(f"{option}={name!r} is not a device Kiln runs on; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KilnError(f"{option}={name!r} but no CUDA device is available; use cpu or auto")
    return torch.device("cuda", local_rank()) if name == "cuda" else device


def init_distributed(device_type: str, timeout_s: float, force: bool = False) -> bool:
    """Join the process group of a torchrun launch (NCCL on GPU, gloo on CPU); True when this call created it.

    A single process needs no group unless `force` (FSDP on one GPU, for benchmarks): then it makes a group of one.
    The GPU backend also carries gloo for CPU tensors, which checkpoint metadata and async saving exchange.
    """
    if is_initialized():
        return False
    launched = int(os.environ.get("WORLD_SIZE", 1))
    if launched == 1 and not force:
        return False
    if "MASTER_ADDR" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown_distributed() -> None:
    """Leave the process group together: a rank that tears down while another still talks to the store (rank 0
    hosts it) can abort at exit, so every rank first waits for the others at a barrier."""
    _background_groups.clear()
    if is_initialized():
        if world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def background_group() -> dist.ProcessGroup | None:
    """A gloo group for work in a background thread (async checkpoints), whose collectives must not interleave
    with the training loop's on the default group. Made on first use, which every rank reaches together."""
    if not is_initialized():
        return None
    key = id(dist.group.WORLD)
    if key not in _background_groups:
        _background_groups[key] = dist.new_group(backend="gloo")
    return _background_groups[key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def gather_objects(obj: object) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank; `[obj]` on one process."""
    if world_size() == 1:
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_across_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks, in float64 so token counts stay exact; unchanged on one process."""
    if world_size() == 1:
        return [float(v) for v in values]
    buffer = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buffer)
    return buffer.tolist()


def max_across_ranks(values: Sequence[float], device: torch.device) -> list[float]:
    """Element-wise maxima over all ranks; unchanged on one process."""
    if world_size() == 1:
        return [float(v) for v in values]
    buffer = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)
    return buffer.tolist()


@contextmanager
def exit_together() -> Iterator[None]:
    """On a multi-rank run, an exception ends this process at once, its error printed by the first rank to fail.

    Returning the exception would leave the other ranks waiting in their next collective; exiting closes this
    rank's connections, so gloo peers fail at once and NCCL peers at the collective timeout (torchrun also stops
    them). Ranks failing after the first (usually with "connection closed") stay quiet, so the cause is shown once.
    A single process re-raises unchanged.
    """
    try:
        yield
    except BaseException as err:
        if world_size() == 1:
            raise
        _report_if_first(err)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130 if isinstance(err, KeyboardInterrupt) else 2 if isinstance(err, KilnError) else 1)


def _report_if_first(err: BaseException) -> None:
    """Count failures in the rendezvous store; the first rank to fail prints the traceback, later ones nothing."""
    try:
        store = dist.distributed_c10d._get_default_store()  # no public accessor; torchrun's or rank 0's TCP store
        store.set_timeout(timedelta(seconds=5))
        first = store.add(_FAILURES_KEY, 1) == 1
    except Exception:  # noqa: BLE001 - the store's host (rank 0) has gone: it failed first and printed
        print(f"rank {rank()}: stopping after another rank failed ({type(err).__name__})", file=sys.stderr)
        return
    if first:
        text = "".join(traceback.format_exception(err)) if not isinstance(err, KilnError) else f"error: {err}\n"
        print(f"kiln: rank {rank()} of {world_size()} failed; stopping all ranks\n{text}", end="", file=sys.stderr)
