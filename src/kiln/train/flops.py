"""Peak FLOP/s of the training device, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import functools
import logging
import re
import time
from dataclasses import dataclass

import torch

log = logging.getLogger("kiln.train")


@dataclass(frozen=True)
class GpuPeaks:
    """Dense (no sparsity) matmul peaks in FLOP/s: bf16 and tf32 tensor cores, fp32 without them."""

    bf16: float
    tf32: float
    fp32: float


# Data-sheet peaks, dense. Vendors print tensor-core figures "with sparsity" (twice the dense rate); halved here.
# - H100 SXM / PCIe: NVIDIA H100 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/h100) and the
#   "NVIDIA H100 Tensor Core GPU Architecture" whitepaper, table 3 (the exact 989.4 / 494.7 / 66.9 figures).
# - H200 (SXM): NVIDIA H200 data sheet (nvidia.com/en-us/data-center/h200): the same compute as the H100 SXM.
# - A100 (all 40 and 80 GB boards): NVIDIA A100 data sheet (nvidia.com/en-us/data-center/a100).
# - L40S: NVIDIA L40S data sheet (nvidia.com/en-us/data-center/l40s).
# - MI300X: AMD Instinct MI300X data sheet (amd.com/en/products/accelerators/instinct/mi300/mi300x.html).
# Patterns match the whole torch.cuda.get_device_name() string, so variants with other figures (H100 NVL,
# H200 NVL, GH200, H800, A800, L40) are unknown rather than mistaken for a tabled board.
GPU_PEAKS: dict[str, GpuPeaks] = {
    r"NVIDIA H100 80GB HBM3": GpuPeaks(989.4e12, 494.7e12, 66.9e12),  # SXM5
    r"NVIDIA H200": GpuPeaks(989.4e12, 494.7e12, 66.9e12),
    r"NVIDIA H100 PCIe": GpuPeaks(756e12, 378e12, 51.2e12),
    r"NVIDIA A100[- ].*": GpuPeaks(312e12, 156e12, 19.5e12),  # A100-SXM4-80GB, A100-PCIE-40GB, A100 80GB PCIe
    r"NVIDIA L40S": GpuPeaks(362.05e12, 183e12, 91.6e12),
    r"AMD Instinct MI300X( VF)?": GpuPeaks(1307.4e12, 653.7e12, 163.4e12),
}


@dataclass(frozen=True)
class PeakFlops:
    """The per-device FLOP/s that MFU divides by (None: no MFU), and in words where it came from."""

    value: float | None
    source: str


def gpu_peaks(name: str) -> GpuPeaks | None:
    """The data-sheet peaks of the GPU called `name`, or None for a name not in the table."""
    for pattern, peaks in GPU_PEAKS.items():
        if re.fullmatch(pattern, name.strip(), flags=re.IGNORECASE):
            return peaks
    return None


def matmul_kind(precision: str) -> str:
    """Which peak a run's matmuls can reach: bf16, or for fp32 runs tf32 when torch lets matmuls use TF32."""
    if precision == "bf16":
        return "bf16"
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def gpu_peak_flops(name: str, kind: str = "bf16") -> float | None:
    """Dense data-sheet FLOP/s of GPU `name` for matmuls of `kind` (bf16, tf32 or fp32); None if not tabled."""
    peaks = gpu_peaks(name)
    return None if peaks is None else getattr(peaks, kind)


def measure_cpu_flops(dtype: torch.dtype = torch.float32, seconds: float = 0.5, size: int = 1024) -> float:
    """Achieved matmul FLOP/s on this CPU: a practical peak, since CPUs publish no single figure."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


@functools.cache
def _warn_unknown_gpu(name: str) -> None:
    """Once per process and GPU name: every run built in the process (bench, sweeps) would repeat it."""
    log.warning("no data-sheet peak FLOP/s is known for GPU %r, so MFU is off; to report it, set "
                "--trainer.peak_flops=<the GPU's dense FLOP/s at the run's precision, from its data sheet>", name)


def peak_flops(device: torch.device, precision: str, override: float | None = None) -> PeakFlops:
    """The configured value, else a known GPU's data-sheet peak for the run's precision, else a measured CPU rate.

    An unknown GPU gets no peak (and a warning) rather than a guess: a wrong peak makes every MFU figure wrong.
    """
    if override:
        return PeakFlops(override, "configured trainer.peak_flops")
    if device.type == "cuda":
        name, kind = torch.cuda.get_device_name(device), matmul_kind(precision)
        peak = gpu_peak_flops(name, kind)
        if peak is None:
            _warn_unknown_gpu(name)
            return PeakFlops(None, f"unknown GPU {name}: no peak, MFU off")
        return PeakFlops(peak, f"{name} {kind} data-sheet peak {peak / 1e12:,.0f} TFLOP/s")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    measured = measure_cpu_flops(dtype)
    return PeakFlops(measured, f"measured CPU {precision} matmul rate {measured / 1e9:,.0f} GFLOP/s")
