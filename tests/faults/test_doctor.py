"""`kiln doctor`: every check reports pass/warn/fail, and a corrupted known answer is a failure."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from kiln.cli import main
from kiln.faults import doctor
from kiln.faults.doctor import (
    CheckResult,
    Probe,
    check_known_answer,
    check_write_speed,
    format_table,
    integer_matmul_operands,
    overall_status,
)
from kiln.faults.doctor_distributed import odd_ranks

CHECKS = ["matmul fp32", "matmul bf16", "matmul determinism", "step determinism", "known answer",
          "memory bandwidth", "checkpoint folder"]
# On a healthy CPU these are exact or deterministic, so they pass whatever the load; the others time things
# (matmul, copy and write speed, free space) and may warn on a loaded machine or a small disk, but never fail.
CORRECTNESS = ["matmul determinism", "step determinism", "known answer"]


def one_wrong_element(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A matmul that corrupts one element, as a faulty device would."""
    out = torch.matmul(x, y)
    out[5, 7] = out[5, 7] * 1.5 + 4
    return out


def run_doctor_json(tmp_path, capsys) -> tuple[int, dict]:
    rc = main(["doctor", "--quick", "--json", "--device", "cpu", "--dir", str(tmp_path)])
    return rc, json.loads(capsys.readouterr().out)


def test_quick_json_passes_the_correctness_checks_on_a_healthy_cpu(tmp_path, capsys):
    rc, report = run_doctor_json(tmp_path, capsys)
    checks = {c["name"]: c for c in report["checks"]}
    assert [c["name"] for c in report["checks"]] == CHECKS
    assert {name: checks[name]["status"] for name in CORRECTNESS} == dict.fromkeys(CORRECTNESS, "pass")
    assert checks["known answer"]["metrics"]["wrong_elements"] == 0
    assert all(c["status"] in ("pass", "warn") for c in report["checks"]), report["checks"]
    assert report["overall"] in ("pass", "warn") and rc == 0
    assert report["distributed"] is False and not list(tmp_path.iterdir())  # the write probe cleaned up


def test_quick_json_reports_a_corrupted_known_answer_as_a_failure(tmp_path, capsys, monkeypatch):
    corrupted = functools.partial(doctor.check_known_answer, matmul=one_wrong_element)
    monkeypatch.setattr(doctor, "check_known_answer", corrupted)
    rc, report = run_doctor_json(tmp_path, capsys)
    known = next(c for c in report["checks"] if c["name"] == "known answer")
    assert known["status"] == "fail" and known["suspect"] == "hardware"
    assert known["metrics"]["wrong_elements"] == 3 * 2  # fp32 integers, bf16 integers, fp32 random; 2 repeats each
    assert report["overall"] == "fail" and rc == 1


def test_closed_form_product_is_exact():
    a, b, exact = integer_matmul_operands(64)
    np.testing.assert_array_equal(a @ b, exact)
    assert a.min() >= -8 and a.max() <= 22 and b.min() >= -8 and b.max() <= 22


def test_corrupted_matmul_fails_the_known_answer(tmp_path):
    probe = Probe(torch.device("cpu"), tmp_path, quick=True)
    assert check_known_answer(probe).status == "pass"
    result = check_known_answer(probe, matmul=one_wrong_element)
    assert result.status == "fail" and result.suspect == "hardware"
    assert result.metrics["wrong_elements"] == 3 * 2  # fp32 integers, bf16 integers, fp32 random; 2 repeats each
    assert overall_status([CheckResult("x", "pass", ""), result]) == "fail"
    assert "-> suspect hardware: silent data corruption" in format_table([result])


def test_unwritable_checkpoint_folder_fails(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = check_write_speed(Probe(torch.device("cpu"), blocker / "ckpt", quick=True))
    assert result.status == "fail" and str(blocker / "ckpt") in result.summary


def test_odd_ranks_names_the_device_that_disagrees():
    h100, a100 = "NVIDIA H100", "NVIDIA A100"
    assert odd_ranks([(h100, "x"), (h100, "x"), (a100, "y"), (h100, "x")]) == []  # other kinds may differ
    assert odd_ranks([(h100, "x"), (h100, "x"), (h100, "z"), (h100, "x")]) == [2]
    assert odd_ranks([(h100, "x"), (h100, "z")]) == [0, 1]  # no majority: cannot tell which


@pytest.mark.slow
def test_distributed_all_reduce_under_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "kiln", "doctor", "--quick", "--json", "--device", "cpu", "--dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    report = json.loads(out.stdout)
    allreduce, agreement = report["checks"][-2:]
    assert agreement["name"] == "rank agreement" and agreement["status"] == "pass", agreement
    assert allreduce["name"] == "all-reduce" and allreduce["status"] == "pass", allreduce
    assert allreduce["metrics"]["world_size"] == 2 and allreduce["metrics"]["wrong_elements"] == 0
    assert [r["rank"] for r in report["ranks"]] == [0, 1]
