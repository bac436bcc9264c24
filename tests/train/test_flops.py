"""The peak FLOP/s behind MFU: the run's precision picks the data-sheet figure, an unknown GPU gets none, and a CPU's
measured peak is cached per machine, dtype, torch version and thread count."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

import pytest
import torch

from kiln.train.flops import (
    PeakFlops,
    auto_precision,
    cpu_model_name,
    gpu_peak_flops,
    peak_flops,
    remeasure_cpu_peak,
)

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")
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
    assert peak_flops(CPU, "fp32", 2e9) == PeakFlops(2e9, "configured trainer.peak_flops")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh kiln cache folder; the CPU peak cache file inside it."""
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cpu_peak_flops.json"


@pytest.fixture
def measured(monkeypatch) -> list[torch.dtype]:
    """Replace the timed matmul with 210 GFLOP/s; the list records each measurement's dtype."""
    dtypes: list[torch.dtype] = []
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: dtypes.append(dtype) or 2.1e11)
    return dtypes


@pytest.fixture
def threads():
    """Set torch's intra-op thread count for one test, restoring it after."""
    saved = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(saved)


def test_cpu_peak_is_a_measured_matmul_rate_in_the_runs_dtype(cache, measured):
    peak = peak_flops(CPU, "fp32")
    assert peak.value == 2.1e11
    assert peak.source.startswith(f"measured CPU fp32 matmul peak 210 GFLOP/s ({cpu_model_name()}, ")
    assert f"cached in {cache})" in peak.source
    assert peak_flops(CPU, "bf16").value == 2.1e11
    assert measured == [torch.float32, torch.bfloat16]


def test_the_cpu_peak_is_measured_once_then_read_from_the_cache(cache, measured, threads):
    threads(2)
    first = peak_flops(CPU, "fp32")
    second = peak_flops(CPU, "fp32")
    assert len(measured) == 1
    assert second.value == first.value == 2.1e11
    today = datetime.date.today().isoformat()
    assert second.source == (f"cached CPU fp32 matmul peak 210 GFLOP/s ({cpu_model_name()}, 2 threads; "
                             f"measured {today}; cached in {cache})")
    [(key, entry)] = json.loads(cache.read_text()).items()
    assert key == f"{cpu_model_name()} | fp32 | torch {torch.__version__} | 2 threads"
    assert entry == {"flops": 2.1e11, "measured": today}


def test_another_thread_count_or_dtype_measures_again(cache, measured, threads):
    threads(1)
    peak_flops(CPU, "fp32")
    threads(2)
    peak_flops(CPU, "fp32")
    peak_flops(CPU, "bf16")
    threads(1)
    assert "1 thread;" in peak_flops(CPU, "fp32").source
    assert measured == [torch.float32, torch.float32, torch.bfloat16]  # the last call was cached
    assert len(json.loads(cache.read_text())) == 3


@pytest.mark.parametrize("contents", ["{not json", "[1, 2]", '{"%s": {"flops": "fast"}}', "\xff\xfe"])
def test_a_corrupt_cache_is_measured_again_and_rewritten(cache, measured, contents):
    cache.parent.mkdir(parents=True)
    key = f"{cpu_model_name()} | fp32 | torch {torch.__version__} | {torch.get_num_threads()} threads"
    cache.write_bytes(contents.replace("%s", key).encode("latin-1"))
    assert peak_flops(CPU, "fp32").source.startswith("measured CPU fp32")
    assert measured == [torch.float32]
    assert json.loads(cache.read_text())[key]["flops"] == 2.1e11
    assert peak_flops(CPU, "fp32").source.startswith("cached CPU fp32")


def test_an_unwritable_cache_still_gives_the_measured_peak(tmp_path, monkeypatch, measured, caplog):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "file"))  # a file where the folder should be
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        assert peak_flops(CPU, "fp32").value == 2.1e11
    assert "could not cache the CPU peak" in caplog.text


@pytest.mark.parametrize(("previous", "cached", "new", "kept"), [
    (1e11, 1e11, 3e11, 3e11),  # the new measurement is higher: it replaces the old
    (1e11, 1e11, 5e10, 1e11),  # a busier machine now: the old figure stays
    (2e11, 1e11, 5e10, 2e11),  # the run's peak is higher than the cache's
])
def test_remeasuring_keeps_the_highest_figure(cache, monkeypatch, previous, cached, new, kept):
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: cached)
    peak_flops(CPU, "fp32")
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: new)
    peak = remeasure_cpu_peak("fp32", previous)
    assert peak.value == kept and peak.source.startswith("re-measured CPU fp32 matmul peak")
    assert peak_flops(CPU, "fp32").value == kept  # and the cache holds it


@pytest.mark.parametrize(("bf16_flops", "expected"), [(7e11, "bf16"), (3e11, "fp32")])
def test_auto_precision_takes_bf16_where_its_measured_peak_is_far_higher(cache, monkeypatch, bf16_flops, expected):
    """fp32 measures 210 GFLOP/s; bf16 3.3x that is taken, 1.4x is not (casts would eat the gain)."""
    rates = {torch.float32: 2.1e11, torch.bfloat16: bf16_flops}
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: rates[dtype])
    choice, why = auto_precision(CPU)
    assert choice == expected
    assert f"bf16 matmul peak is {bf16_flops / 2.1e11:.1f}x its fp32 peak" in why
    assert auto_precision(CPU) == (choice, why)  # the second call reads both peaks from the cache


def test_auto_precision_is_settled_before_the_run_and_recorded(cache, monkeypatch, tiny_dataset, tmp_path):
    from kiln.train.run import build_run

    from .conftest import tiny_config

    rates = {torch.float32: 2.1e11, torch.bfloat16: 8e11}
    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", lambda dtype: rates[dtype])
    run = build_run(tiny_config(tiny_dataset, tmp_path / "run", trainer={"precision": "auto"}))
    assert run.cfg.trainer.precision == "bf16" and run.trainer.autocast_dtype == torch.bfloat16
    assert "precision: bf16" in (tmp_path / "run/config.yaml").read_text()
