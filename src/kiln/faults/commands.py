"""`kiln doctor`: is this machine (and, under torchrun, this job) fit to train?"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from kiln.distributed import launched_ranks, pick_device
from kiln.faults.doctor import Probe, describe_platform, format_table, overall_status, run_checks


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "doctor", help="health check: matmul speed and correctness, determinism, memory, disk, all-reduce",
        description="Checks that tell hardware trouble from software trouble. Exit code 0 when every check passes "
        "or warns, 1 when one fails. Under torchrun it also checks all-reduce and names the failing ranks.")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device to check (default auto)")
    p.add_argument("--dir", default=".", help="checkpoint folder whose write speed to measure (default: here)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.add_argument("--quick", action="store_true", help="smaller and shorter measurements (a few seconds)")
    p.set_defaults(func=run_doctor)


def in_distributed_job() -> bool:
    import torch.distributed as dist

    return dist.is_available() and (dist.is_initialized() or launched_ranks() > 1)


def _join_job(device: torch.device) -> tuple[torch.device, bool]:
    """Initialise torch.distributed from torchrun's environment if nobody has; returns (device, we_initialised)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return device, False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


def run_doctor(args: argparse.Namespace) -> int:
    device = pick_device(args.device, option="--device")
    distributed, initialised = in_distributed_job(), False
    if distributed:
        device, initialised = _join_job(device)
    probe = Probe(device, Path(args.dir), quick=args.quick)
    results, ranks = run_checks(probe), []
    if distributed:
        import torch.distributed as dist

        from kiln.faults.doctor_distributed import check_all_reduce, check_rank_agreement, merge_ranks

        results += [check_all_reduce(probe), check_rank_agreement(probe)]
        results, ranks = merge_ranks(results)
        rank = dist.get_rank()
        if initialised:
            dist.destroy_process_group()
    else:
        rank = 0
    overall = overall_status(results)
    if rank == 0:
        if args.json:
            report = {"platform": describe_platform(probe), "device": str(device), "torch": torch.__version__,
                      "distributed": distributed, "overall": overall, "checks": [r.to_dict() for r in results]}
            if ranks:
                report["ranks"] = ranks
            print(json.dumps(report, indent=1))
        else:
            print(f"kiln doctor: {describe_platform(probe)}")
            print(format_table(results))
            if not distributed:
                print("(all-reduce: not a distributed job; run under torchrun to check it)")
    return 1 if overall == "fail" else 0
