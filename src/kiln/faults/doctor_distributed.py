"""`kiln doctor` checks that need the whole job: all-reduce correctness and speed, and ranks that disagree.

Run under torchrun; every rank runs every check, and `merge_ranks` reports the worst status per check with
the ranks (and hosts) that did not pass, so a faulty device is named rather than averaged away.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections import Counter
from collections.abc import Callable

import torch
import torch.distributed as dist

from kiln.faults.doctor import STATUSES, CheckResult, Probe, exact_matmuls, tensor_bits

MAX_NAMED_RANKS = 8


def check_all_reduce(probe: Probe) -> CheckResult:
    """In an initialised torch.distributed job: exact known sums, then all-reduce bus bandwidth (nccl-tests' busbw)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    ramp = torch.arange(1 << 16, dtype=torch.int64, device=probe.device) % 1000 + 1
    ints = ramp * (rank + 1)
    dist.all_reduce(ints)
    ones = torch.ones(1 << 16, device=probe.device)
    dist.all_reduce(ones)
    wrong = int((ints != ramp * (world * (world + 1) // 2)).sum()) + int((ones != world).sum())
    n_bytes = 16 << 20 if probe.quick else 64 << 20
    payload = torch.ones(n_bytes // 4, device=probe.device)
    per_s = collective_rate(probe, lambda: dist.all_reduce(payload), 5 if probe.quick else 20)
    bus = n_bytes * per_s * 2 * (world - 1) / world
    metrics = {"bus_bytes_per_s": bus, "wrong_elements": wrong, "world_size": world}
    if wrong:
        return CheckResult("all-reduce", "fail", f"{wrong} wrong elements in known sums over {world} ranks", "network",
                           "a NIC, NVLink or switch corrupts data, or ranks run mismatched NCCL/torch", metrics)
    status = "warn" if probe.cuda and world > 1 and bus < 1e9 else "pass"
    summary = f"exact sums over {world} ranks; {bus / 1e9:,.2f} GB/s bus bandwidth ({n_bytes >> 20} MiB)"
    hint = ("" if status == "pass" else "NCCL may be falling back to sockets: check NCCL_DEBUG=INFO for the transport")
    return CheckResult("all-reduce", status, summary, "network" if hint else "", hint, metrics)


def collective_rate(probe: Probe, fn: Callable[[], object], calls: int) -> float:
    """Calls of the collective `fn` per second over a fixed count: every rank must issue the same number of calls,
    so the count cannot depend on each rank's own clock (that would leave one rank waiting for ever)."""
    fn()
    probe.sync()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    probe.sync()
    return calls / (time.perf_counter() - start)


def odd_ranks(results: list[tuple[str, str]]) -> list[int]:
    """Ranks whose (device kind, digest) disagrees with the majority of their device kind; all of a kind's ranks
    when it has no strict majority (two ranks that disagree cannot say which one is wrong)."""
    odd = []
    for kind in sorted({k for k, _ in results}):
        ranks = [(rank, d) for rank, (k, d) in enumerate(results) if k == kind]
        majority, count = Counter(d for _, d in ranks).most_common(1)[0]
        if count == len(ranks):
            continue
        odd += [rank for rank, d in ranks if d != majority or 2 * count <= len(ranks)]
    return sorted(odd)


def check_rank_agreement(probe: Probe) -> CheckResult:
    """Ranks on the same kind of device must compute the same bits from the same inputs; the odd one out is faulty.

    This is the distributed form of the determinism check, and it names the rank whose device disagrees.
    """
    gen = torch.Generator().manual_seed(4)
    a, b = torch.randn(512, 512, generator=gen).to(probe.device), torch.randn(512, 512, generator=gen).to(probe.device)
    with exact_matmuls():
        digest = hashlib.sha256(tensor_bits(a @ b).cpu().numpy().tobytes()).hexdigest()
    # CPUs with different vector units legitimately pick different kernels
    kind = torch.cuda.get_device_name(probe.device) if probe.cuda else f"cpu {torch.backends.cpu.get_cpu_capability()}"
    everyone: list[tuple[str, str]] = [("", "")] * dist.get_world_size()
    dist.all_gather_object(everyone, (kind, digest))
    odd = odd_ranks(everyone)
    if not odd:
        return CheckResult("rank agreement", "pass", f"all {len(everyone)} ranks computed identical matmul bits")
    return CheckResult("rank agreement", "fail", f"ranks {odd} computed different bits from the other ranks "
                       "with the same device", "hardware", "the named ranks' devices (or a mixed software stack): "
                       "compare `kiln doctor` on those hosts alone", {"disagreeing_ranks": len(odd)})


def merge_ranks(results: list[CheckResult]) -> tuple[list[CheckResult], list[dict]]:
    """Every rank's results gathered; per check the worst status, naming the ranks that did not pass."""
    mine = {"rank": dist.get_rank(), "host": socket.gethostname(), "checks": [r.to_dict() for r in results]}
    everyone: list[dict] = [{}] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    merged = []
    for i, result in enumerate(results):
        per_rank = [(e["rank"], e["host"], CheckResult(**e["checks"][i])) for e in everyone]
        worst = max(per_rank, key=lambda item: STATUSES.index(item[2].status))[2]
        bad = [f"{r.status} on rank {rank} ({host})" for rank, host, r in per_rank if r.status != "pass"]
        more = f" and {len(bad) - MAX_NAMED_RANKS} more" if len(bad) > MAX_NAMED_RANKS else ""
        summary = result.summary + (f" | {', '.join(bad[:MAX_NAMED_RANKS])}{more}" if bad else "")
        merged.append(CheckResult(result.name, worst.status, summary, worst.suspect, worst.hint, result.metrics))
    return merged, everyone
