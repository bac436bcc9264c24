"""`eval.downstream` during one-process training: logged at eval steps, equal to `kiln eval` on the checkpoint."""

from __future__ import annotations

import json
import logging

import pytest

from kiln.cli import main
from kiln.errors import KilnError
from kiln.train.run import train

from ..train.conftest import tiny_config
from .conftest import FIXTURES

TASKS = ["arc_easy_rc_0shot", "piqa_mc_5shot", "hellaswag_bpb_0shot"]


def _downstream_config(dataset, run_dir, **eval_overrides):
    return tiny_config(dataset, run_dir, trainer={"steps": 5}, checkpoint={"every": 5}, logging={"tensorboard": True},
                       eval={"every": 2, "downstream": TASKS, "downstream_limit": 3, "downstream_batch_size": 2,
                             "downstream_data": str(FIXTURES), **eval_overrides})


def test_in_loop_metrics_are_logged_at_eval_steps_and_match_kiln_eval(tiny_dataset, tmp_path, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="kiln.train"):
        train(_downstream_config(tiny_dataset, run))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {line["step"]: line for line in lines if "downstream_time_s" in line}
    assert sorted(logged) == [2, 4, 5]  # every 2 steps and the last
    for line in logged.values():
        for task in TASKS:
            assert line[f"downstream/{task}/chance"] > 0
            metrics = {key.split("/")[2] for key in line if key.startswith(f"downstream/{task}/")}
            expected = {"bpb", "chance"} | ({"acc_raw", "acc_per_token", "acc_per_char"} if "_bpb_" not in task else
                                            set()) | ({"acc_uncond"} if "_rc_" in task else set())
            assert metrics == expected, task

    # one progress line per evaluation, with each task's primary metric beside chance
    said = [r.getMessage() for r in caplog.records if "downstream" in r.getMessage()]
    assert [line.split(":")[0] for line in said] == ["step 2", "step 4", "step 5"]
    arc = logged[4]["downstream/arc_easy_rc_0shot/acc_per_char"]
    assert f"arc_easy_rc_0shot acc_per_char {arc:.4f} (chance 0.2500)" in said[1]

    assert main(["eval", str(run), "--tasks", ",".join(TASKS), "--limit", "3", "--data-dir", str(FIXTURES),
                 "--out", str(tmp_path / "eval")]) == 0
    offline = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]
    for task in TASKS:
        for metric, value in offline[task]["metrics"].items():
            assert logged[5][f"downstream/{task}/{metric}"] == pytest.approx(value, abs=1e-5), (task, metric)
    # the weights moved between evaluations, so the numbers did too
    assert logged[2]["downstream/hellaswag_bpb_0shot/bpb"] != logged[5]["downstream/hellaswag_bpb_0shot/bpb"]


def test_downstream_metrics_reach_tensorboard(tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(_downstream_config(tiny_dataset, run, downstream=["copa_rc_0shot"]))
    [events] = list(run.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    assert [e.step for e in accumulator.Scalars("downstream/copa_rc_0shot/acc_raw")] == [2, 4, 5]


def test_a_misspelt_downstream_task_fails_when_the_config_loads(tiny_dataset, tmp_path):
    with pytest.raises(KilnError, match="hellaswag_rc_5shot"):
        _downstream_config(tiny_dataset, tmp_path / "run", downstream=["helaswag_rc_5shot"])
