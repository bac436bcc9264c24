"""MFU is never above 100%: a CPU peak that training beats is measured again, any other too-low peak is flagged."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from kiln.train.bench import report
from kiln.train.config import load_config
from kiln.train.trainer import Trainer

# The default config's 16 x 256 = 4,096 tokens per step in 1 s at 1e6 FLOPs per token: 4.1 GFLOP/s achieved.
FLOPS_PER_TOKEN, ACHIEVED = 1_000_000, 4.096e9


def make_trainer(peak: float | None, configured: float | None = None, device: str = "cpu") -> Trainer:
    """A trainer for `throughput` alone: a stand-in model, no batches, no callbacks."""
    cfg = load_config(None, {"trainer": {"peak_flops": configured}})
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(cfg, model, optimizer, iter([]), torch.device(device), [], FLOPS_PER_TOKEN, peak)


@pytest.fixture
def measurements(tmp_path, monkeypatch) -> list[float]:
    """A fresh kiln cache; append the FLOP/s the next CPU measurements give (none given: measuring fails the test)."""
    monkeypatch.setenv("KILN_CACHE", str(tmp_path / "cache"))
    figures: list[float] = []

    def measure(dtype: torch.dtype) -> float:
        if not figures:
            pytest.fail("the peak was measured")
        return figures.pop(0)

    monkeypatch.setattr("kiln.train.flops.measure_cpu_flops", measure)
    return figures


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kiln.train" and r.levelno == logging.WARNING]


def test_mfu_below_the_peak_is_achieved_over_peak(measurements, caplog):
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        out = make_trainer(peak=1e10).throughput(step_time=1.0)
    assert out == {"tokens_per_s": 4096, "mfu": pytest.approx(ACHIEVED / 1e10)}
    assert warnings(caplog) == []


def test_no_peak_no_mfu():
    assert make_trainer(peak=None).throughput(step_time=1.0) == {"tokens_per_s": 4096}


def test_a_cpu_peak_that_training_beats_is_measured_again_once(measurements, caplog):
    measurements.append(8e9)
    trainer = make_trainer(peak=2e9)
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        first = trainer.throughput(step_time=1.0)["mfu"]
        second = trainer.throughput(step_time=0.25)["mfu"]  # 16.4 GFLOP/s: beats even the new peak
    assert first == pytest.approx(ACHIEVED / 8e9)
    assert second == 1.0  # clamped, and not measured a third time (the fixture would fail the test)
    assert trainer.peak_flops == 8e9 and trainer.peak_source.startswith("re-measured CPU fp32 matmul peak 8 GFLOP/s")
    [message] = warnings(caplog)
    assert "4.1 GFLOP/s" in message and "2.0 GFLOP/s" in message and "8.0 GFLOP/s" in message
    assert "lower bound" not in message


def test_a_remeasured_cpu_peak_still_beaten_is_a_lower_bound(measurements, caplog):
    measurements.append(1e9)  # lower than before: the run keeps the higher figure
    trainer = make_trainer(peak=2e9)
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        assert trainer.throughput(step_time=1.0)["mfu"] == 1.0
    assert trainer.peak_flops == 2e9
    [message] = warnings(caplog)
    assert "lower bound" in message and "4.1 GFLOP/s" in message and "2.0 GFLOP/s" in message


def test_a_configured_peak_is_clamped_with_one_warning_and_never_measured(measurements, caplog):
    trainer = make_trainer(peak=1e9, configured=1e9)
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        assert [trainer.throughput(step_time=1.0)["mfu"] for _ in range(3)] == [1.0, 1.0, 1.0]
    [message] = warnings(caplog)
    assert "configured trainer.peak_flops" in message and "too low" in message
    assert trainer.peak_flops == 1e9


def test_a_gpu_beating_its_data_sheet_peak_is_clamped_with_one_warning(measurements, caplog):
    trainer = make_trainer(peak=1e9, device="cuda")
    trainer.peak_source = "NVIDIA H100 80GB HBM3 bf16 data-sheet peak"
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        assert [trainer.throughput(step_time=1.0)["mfu"] for _ in range(2)] == [1.0, 1.0]
    [message] = warnings(caplog)
    assert "data-sheet peak" in message and "too low" in message


def test_bench_reports_the_clamped_mfu(measurements, capsys):
    trainer = make_trainer(peak=1e9, configured=1e9)
    result = report(trainer.cfg, trainer, {"full": [1.0], "bare": []}, torch.device("cpu"))
    assert result["mfu"] == 1.0
    assert "MFU 100.0%" in capsys.readouterr().out
