"""`kiln ladder run`, `fit` and `predict` end to end on the tiny dataset, as a user runs them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from kiln.cli import main
from kiln.ladder.results import collect
from kiln.train.checkpointing import list_checkpoints, step_of

EVALS = Path(__file__).parents[1] / "assets" / "evals"


def _spec(tmp_path: Path, dataset: Path) -> Path:
    spec = {
        "sizes": [1000, 3000, 8000, 16000, 32000], "multiples": [0.5, 1], "tokens_per_param": 5,
        "heldout": {"sizes": [64000], "multiples": [0.5]},
        "shape": {"aspect_ratio": 16, "head_dim": 8},
        "eval_tokens": 2048,
        "train": {
            "data": {"paths": [str(dataset)], "seq_len": 32},
            "trainer": {"threads": 1},
            "eval": {"samples": 0, "downstream": ["arc_easy_rc_0shot"], "downstream_limit": 5,
                     "downstream_data": str(EVALS)},
            "stability": {"layer_stats_every": 0, "forensics": False},
            "watchdog": {"enabled": False},
            "logging": {"progress": "lines"},
        },
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
def test_ladder_runs_fits_and_predicts(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "ladder"
    assert main(["ladder", "run", str(_spec(tmp_path, tiny_dataset)), "--out", str(out), "--parallel", "2",
                 "--progress", "lines"]) == 0
    printed = capsys.readouterr().out
    assert "11 runs" in printed and "0 already finished" in printed

    # every main run kept its branch's fork point, and each branch started there and ran to its own length
    plan = json.loads((out / "plan.json").read_text())
    for rung in plan["rungs"]:
        runs = {run["name"]: run for run in rung["runs"]}
        main_dir = out / rung["name"] / max(runs.values(), key=lambda r: r["multiple"])["name"]
        forks = sorted(r["fork_step"] for r in runs.values() if r["fork_step"])
        assert [step_of(p) for p in list_checkpoints(main_dir)][:-1] == forks
        for run in runs.values():
            records = (out / rung["name"] / run["name"] / "metrics.jsonl").read_text().splitlines()
            assert json.loads(records[0])["step"] == (run["fork_step"] or 0) + 1
            assert json.loads(records[-1])["step"] == run["steps"]

    points, missing = collect(out)
    assert missing == [] and len(points) == 11 and sum(p.heldout for p in points) == 1
    assert all("arc_easy_rc_0shot" in p.tasks for p in points)

    # a rerun finds everything finished and trains nothing
    assert main(["ladder", "run", str(out / "ladder.yaml"), "--out", str(out), "--parallel", "2"]) == 0
    assert "11 already finished; 0 main runs, then 0 branches" in capsys.readouterr().out

    assert main(["ladder", "fit", str(out), "--samples", "20"]) == 0
    report = (out / "fit.md").read_text()
    assert "Held-out runs: predicted vs actual" in report and "n64k/0.5xC" in report
    table = [line for line in report.split("## Held-out runs")[1].split("##")[0].splitlines() if line.startswith("|")]
    assert len(table) > 3 and {line.count("|") for line in table} == {8}  # every row has all 7 cells
    fitted = json.loads((out / "fit.json").read_text())
    assert fitted["points"] == 10 and len(fitted["loss"]["bootstrap"]) > 10
    check = fitted["heldout"][0]
    assert check["loss"]["actual"] == pytest.approx(next(p.val_loss for p in points if p.heldout))
    assert check["loss"]["lo"] <= check["loss"]["value"] <= check["loss"]["hi"]
    assert "sigmoid" in fitted["tasks"]["arc_easy_rc_0shot"]
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 11
    for png in ("loss_vs_tokens.png", "predicted_vs_actual.png", "arc_easy_rc_0shot_accuracy.png"):
        assert (out / png).stat().st_size > 1000

    assert main(["ladder", "predict", str(out), "--n", str(check["n"]), "--tokens", str(check["tokens"])]) == 0
    lines = capsys.readouterr().out.splitlines()
    loss_line = next(line for line in lines if line.startswith("validation loss"))
    assert f"{check['loss']['value']:.4f}" in loss_line  # predict says what fit reported for the held-out run
    assert any(line.startswith("arc_easy_rc_0shot accuracy") for line in lines)


def test_predict_without_a_fit_says_how_to_make_one(tmp_path, capsys):
    assert main(["ladder", "predict", str(tmp_path), "--n", "1e6", "--tokens", "2e7"]) == 2
    assert "kiln ladder fit" in capsys.readouterr().err


def test_fit_of_a_folder_that_is_no_ladder_is_refused(tmp_path, capsys):
    assert main(["ladder", "fit", str(tmp_path)]) == 2
    assert "not a ladder folder" in capsys.readouterr().err
