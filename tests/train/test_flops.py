"""The peak FLOP/s behind MFU: the run's precision picks the data-sheet figure, and an unknown GPU gets none."""

from __future__ import annotations

import logging

import pytest
import torch

from kiln.train.flops import PeakFlops, gpu_peak_flops, peak_flops

CUDA = torch.device("cuda", 0)
H100_SXM, H100_PCIE = "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe"


@pytest.fixture
def gpu_named(monkeypatch: pytest.MonkeyPatch):
    """Make torch report a GPU of the given name, so the GPU path runs on a CPU-only machine."""
    def name_it(name: str) -> None:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    return name_it


@pytest.fixture
def matmul_precision():
    """Set torch's float32 matmul precision for one test, restoring the previous value after it."""
    saved = torch.get_float32_matmul_precision()
    yield torch.set_float32_matmul_precision
    torch.set_float32_matmul_precision(saved)


@pytest.mark.parametrize(("precision", "matmul", "kind", "expected"), [
    ("bf16", "highest", "bf16", 989.4e12),
    ("bf16", "high", "bf16", 989.4e12),  # allowing TF32 does not change bf16 matmuls
    ("fp32", "highest", "fp32", 66.9e12),  # true fp32: no tensor cores
    ("fp32", "high", "tf32", 494.7e12),  # fp32 matmuls may run on TF32 tensor cores
    ("fp32", "medium", "tf32", 494.7e12),
])
def test_the_runs_precision_picks_the_peak(gpu_named, matmul_precision, precision, matmul, kind, expected):
    gpu_named(H100_SXM)
    matmul_precision(matmul)
    assert peak_flops(CUDA, precision) == PeakFlops(
        expected, f"{H100_SXM} {kind} data-sheet peak {expected / 1e12:,.0f} TFLOP/s")


@pytest.mark.parametrize(("name", "bf16", "tf32", "fp32"), [
    (H100_SXM, 989.4e12, 494.7e12, 66.9e12),
    ("NVIDIA H200", 989.4e12, 494.7e12, 66.9e12),
    (H100_PCIE, 756e12, 378e12, 51.2e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12, 19.5e12),
    ("NVIDIA A100 80GB PCIe", 312e12, 156e12, 19.5e12),
])
def test_data_sheet_peaks_by_name(name, bf16, tf32, fp32):
    assert [gpu_peak_flops(name, kind) for kind in ("bf16", "tf32", "fp32")] == [bf16, tf32, fp32]


def test_h100_pcie_is_not_taken_for_the_sxm_board(gpu_named):
    gpu_named(H100_PCIE)
    assert peak_flops(CUDA, "bf16").value == 756e12
    gpu_named(H100_SXM)
    assert peak_flops(CUDA, "bf16").value == 989.4e12


@pytest.mark.parametrize("name", ["NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GH200 480GB", "NVIDIA H800",
                                  "NVIDIA A10", "NVIDIA L40", "NVIDIA GeForce RTX 4090", "Imaginary H100 clone"])
def test_variants_with_other_figures_match_nothing(name):
    assert gpu_peak_flops(name, "bf16") is None


def test_unknown_gpu_has_no_peak_and_warns_once(gpu_named, caplog):
    name = "Imaginary GPU 9000 (test_unknown_gpu_has_no_peak_and_warns_once)"  # unique: the warning is per process
    gpu_named(name)
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        first, second = peak_flops(CUDA, "bf16"), peak_flops(CUDA, "fp32")
    assert first == PeakFlops(None, f"unknown GPU {name}: no peak, MFU off")
    assert second.value is None
    warnings = [r for r in caplog.records if r.name == "kiln.train" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert name in warnings[0].getMessage() and "--trainer.peak_flops" in warnings[0].getMessage()


def test_configured_peak_wins_over_the_data_sheet_and_the_measurement(gpu_named, monkeypatch):
    gpu_named(H100_SXM)
    assert peak_flops(CUDA, "bf16", 1.5e14) == PeakFlops(1.5e14, "configured trainer.peak_flops")
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: pytest.fail("measured despite override"))
    assert peak_flops(torch.device("cpu"), "fp32", 2e9) == PeakFlops(2e9, "configured trainer.peak_flops")


def test_cpu_peak_is_a_measured_matmul_rate_in_the_runs_dtype(monkeypatch):
    dtypes = []
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: dtypes.append(dtype) or 2.1e11)
    assert peak_flops(torch.device("cpu"), "fp32") == PeakFlops(2.1e11, "measured CPU fp32 matmul rate 210 GFLOP/s")
    assert peak_flops(torch.device("cpu"), "bf16").value == 2.1e11
    assert dtypes == [torch.float32, torch.bfloat16]
