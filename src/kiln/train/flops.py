"""Peak FLOP/s of the training device, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import time

import torch

# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), in FLOP/s.
GPU_PEAK_BF16 = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 125e12,
    "RTX 4090": 165e12,
    "MI300X": 1307e12,
}


def gpu_peak_flops(name: str) -> float | None:
    for key, peak in GPU_PEAK_BF16.items():
        if key.lower() in name.lower():
            return peak
    return None


def measure_cpu_flops(dtype: torch.dtype = torch.float32, seconds: float = 0.5, size: int = 1024) -> float:
    """Achieved matmul FLOP/s on this CPU: a practical peak, since CPUs publish no single figure."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def peak_flops(device: torch.device, precision: str, override: float | None = None) -> float | None:
    """The configured value, else a known GPU's data-sheet peak, else a measured CPU matmul rate."""
    if override:
        return override
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device))
    return measure_cpu_flops(torch.bfloat16 if precision == "bf16" else torch.float32)
