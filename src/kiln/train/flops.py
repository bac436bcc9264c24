"""Peak FLOP/s of the training device, for model FLOPs utilisation (MFU)."""

from __future__ import annotations

import datetime
import functools
import json
import logging
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kiln.data.prepare import cache_root
from kiln.faults.manifest import atomic_write_bytes

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


def format_flops(flops: float) -> str:
    """FLOP/s in the unit a person reads at that scale: GFLOP/s for CPUs, TFLOP/s for GPUs."""
    return f"{flops / 1e12:,.1f} TFLOP/s" if flops >= 1e13 else f"{flops / 1e9:,.1f} GFLOP/s"


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


def measure_cpu_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 10,
                      budget_s: float = 3.0) -> float:
    """Best-of-`repeats` FLOP/s of a square matmul (at least 3, within about `budget_s`): a practical peak.

    CPUs publish no single figure. A 2048 matmul is compute bound, and the best repetition is the one least slowed
    by other work on the machine, so the figure is stable where one short average was not.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b  # warm-up: thread pool, packing buffers
    best, start = float("inf"), time.perf_counter()
    for i in range(repeats):
        if i >= 3 and time.perf_counter() - start > budget_s:
            break
        tick = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - tick)
    return 2 * size**3 / best


def cpu_model_name() -> str:
    """/proc/cpuinfo's model name, else platform.processor(): what the cached CPU peak belongs to."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_peak_cache() -> Path:
    """The JSON file of measured CPU peaks, in the kiln cache folder beside the prepared built-in corpus."""
    return cache_root() / "cpu_peak_flops.json"


def _cpu_peak_key(precision: str) -> str:
    """The peak depends on the CPU, the dtype, torch's kernels and how many threads run them."""
    return f"{cpu_model_name()} | {precision} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _read_cpu_peaks(path: Path) -> dict[str, dict]:
    """The cached peaks, or none when the file is missing or unreadable (it is then measured and rewritten)."""
    try:
        peaks = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable CPU peak cache %s (%s); measuring again", path, err)
        return {}
    if not isinstance(peaks, dict):
        log.warning("ignoring CPU peak cache %s: not a JSON object; measuring again", path)
        return {}
    return peaks


def _cached_flops(entry: object) -> float | None:
    """An entry's FLOP/s, or None for a malformed one."""
    if isinstance(entry, dict) and isinstance(entry.get("flops"), int | float) and entry["flops"] > 0:
        return float(entry["flops"])
    return None


def _store_cpu_peak(path: Path, precision: str, flops: float) -> dict:
    """Record `flops` under this machine's key, atomically; a cache that cannot be written only costs a remeasure."""
    peaks = _read_cpu_peaks(path)
    entry = {"flops": flops, "measured": datetime.date.today().isoformat()}
    peaks[_cpu_peak_key(precision)] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, (json.dumps(peaks, indent=1, sort_keys=True) + "\n").encode())
    except OSError as err:
        log.warning("could not cache the CPU peak in %s (%s); the next run measures it again", path, err)
    return entry


def _cpu_source(how: str, precision: str, entry: dict, path: Path) -> str:
    """Words for the run header: the figure, the machine it holds for, and when and where it was measured."""
    threads = torch.get_num_threads()
    return (f"{how} CPU {precision} matmul peak {entry['flops'] / 1e9:,.0f} GFLOP/s ({cpu_model_name()}, "
            f"{threads} thread{'s' * (threads != 1)}; measured {entry['measured']}; cached in {path})")


def _cpu_dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def cpu_peak_flops(precision: str) -> PeakFlops:
    """This CPU's matmul peak for the run's precision: measured once per machine, dtype, torch and thread count."""
    path = cpu_peak_cache()
    entry = _read_cpu_peaks(path).get(_cpu_peak_key(precision))
    if _cached_flops(entry) is not None:
        return PeakFlops(_cached_flops(entry), _cpu_source("cached", precision, entry, path))
    entry = _store_cpu_peak(path, precision, measure_cpu_flops(_cpu_dtype(precision)))
    return PeakFlops(entry["flops"], _cpu_source("measured", precision, entry, path))


# trainer.precision=auto picks bf16 on a CPU whose bf16 matmul peak is at least this multiple of its fp32 peak.
# Autocast adds casts and the small matmuls of a small model reach less of the peak than a 2048 square does: on
# an AMX Xeon a 3.2x peak gave the main job 1.5x tokens/s (docs/performance.md), so a 2x peak is about even.
BF16_CPU_GAIN = 2.0


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(bf16 or fp32, why) for `trainer.precision=auto`: bf16 where this device computes it clearly faster."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "the GPU computes in bf16"
        return "fp32", "the GPU has no bf16"
    ratio = cpu_peak_flops("bf16").value / cpu_peak_flops("fp32").value
    choice = "bf16" if ratio >= BF16_CPU_GAIN else "fp32"
    return choice, f"this CPU's bf16 matmul peak is {ratio:.1f}x its fp32 peak (bf16 from {BF16_CPU_GAIN:g}x)"


def remeasure_cpu_peak(precision: str, previous: float = 0.0) -> PeakFlops:
    """Measure again and keep the higher of the old and new figures, updating the cache.

    For when training beat the cached peak: it was then measured while other work slowed the machine.
    """
    path = cpu_peak_cache()
    cached = _cached_flops(_read_cpu_peaks(path).get(_cpu_peak_key(precision))) or 0.0
    best = max(previous, cached, measure_cpu_flops(_cpu_dtype(precision)))
    entry = _store_cpu_peak(path, precision, best)
    return PeakFlops(best, _cpu_source("re-measured", precision, entry, path))


@functools.cache
def _warn_unknown_gpu(name: str) -> None:
    """Once per process and GPU name: every run built in the process (bench, sweeps) would repeat it."""
    log.warning("no data-sheet peak FLOP/s is known for GPU %r, so MFU is off; to report it, set "
                "--trainer.peak_flops=<the GPU's dense FLOP/s at the run's precision, from its data sheet>", name)


def peak_flops(device: torch.device, precision: str, override: float | None = None) -> PeakFlops:
    """The configured value, else a known GPU's data-sheet peak for the run's precision, else the CPU's peak.

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
    return cpu_peak_flops(precision)
