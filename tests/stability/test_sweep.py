"""`kiln sweep`: planning, up-front validation, failure handling and summaries; one real sweep of two tiny runs."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from kiln.cli import main
from kiln.errors import KilnError
from kiln.stability.sweep import Variation, parse_grid, plan_sweep, run_variations, split_values, sweep

from .conftest import fake_metrics, write_run


@pytest.fixture
def base(tmp_path) -> Path:
    """A recipe for 6 steps; the fake-run tests never train it."""
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"steps": 6, "seed": 7}, "optim": {"lr": 1e-3}}))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_plan_is_the_cartesian_product_times_seeds_with_readable_names():
    grid = parse_grid(["optim.lr=1e-3,3e-3", "--model.qk_norm=none,full"])
    assert grid == {"optim.lr": ["1e-3", "3e-3"], "model.qk_norm": ["none", "full"]}
    plan = plan_sweep(grid, seeds=2, first_seed=5)
    assert len(plan) == 8
    assert plan[0] == Variation("optim.lr=1e-3__model.qk_norm=none__seed=5",
                                {"optim.lr": "1e-3", "model.qk_norm": "none"}, 5)
    assert [v.name for v in plan[:4]] == [
        "optim.lr=1e-3__model.qk_norm=none__seed=5", "optim.lr=1e-3__model.qk_norm=none__seed=6",
        "optim.lr=1e-3__model.qk_norm=full__seed=5", "optim.lr=1e-3__model.qk_norm=full__seed=6"]
    assert {(v.values["optim.lr"], v.values["model.qk_norm"], v.seed) for v in plan} == {
        (lr, qk, seed) for lr in ("1e-3", "3e-3") for qk in ("none", "full") for seed in (5, 6)}
    assert plan[0].overrides() == ["--optim.lr=1e-3", "--model.qk_norm=none", "--trainer.seed=5"]


def test_grid_values_keep_lists_whole_and_bad_grids_are_refused():
    assert split_values("[0.5,0.5],[0.9, 0.1]") == ["[0.5,0.5]", "[0.9, 0.1]"]
    assert plan_sweep(parse_grid(["data.paths=[a/b]"]), 1)[0].name == "data.paths=_a_b___seed=0"
    for spec, message in [("optim.lr", "must look like"), ("optim.lr=1,", "must look like"),
                          ("trainer.seed=1,2", "--seeds"), ("optim.lr=1,1", "repeats")]:
        with pytest.raises(KilnError, match=message):
            parse_grid([spec])
    with pytest.raises(KilnError, match="twice"):
        parse_grid(["optim.lr=1", "optim.lr=2"])


def test_a_misspelt_key_or_bad_value_fails_before_anything_runs(base, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(KilnError, match=r"optim\.lrr.*did you mean optim\.lr\?"):
        sweep(base, ["optim.lr=1e-3", "optim.lrr=1,2"], out=out)
    with pytest.raises(KilnError, match=r"variation model\.qk_norm=fulll__seed=7: .*not one of none, full"):
        sweep(base, ["model.qk_norm=none,fulll"], out=out)
    with pytest.raises(KilnError, match="also set optim.lr"):
        sweep(base, ["optim.lr=1e-3,2e-3"], out=out, extra=["--optim.lr=5e-3"])
    assert not out.exists()


def test_dry_run_prints_the_commands_and_runs_nothing(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(base), "--grid", "optim.lr=1e-3,2e-3", "--out", str(out), "--dry-run",
                 "--", "--trainer.steps=3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    commands = [line for line in printed if " -m kiln train " in line]
    assert len(commands) == 2
    assert commands[0].endswith(f"{base} --trainer.steps=3 --optim.lr=1e-3 --trainer.seed=7 "
                                f"--trainer.run_dir={out}/optim.lr=1e-3__seed=7")
    assert not out.exists()


def test_finished_runs_are_not_rerun_and_the_summary_holds_their_metrics(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    spiky = fake_metrics(6, grad_spikes={3}, skipped={3}, val_every=3)
    write_run(out / "optim.lr=1e-3__seed=7", spiky)
    write_run(out / "optim.lr=2e-3__seed=7", fake_metrics(6, monitor=False, val_every=100))
    assert sweep(base, ["optim.lr=1e-3,2e-3"], out=out) == 0
    assert not list(out.glob("*/train.log"))
    rows = read_csv(out / "summary.csv")
    assert list(rows[0]) == ["name", "optim.lr", "seed", "status", "exit_code", "final_val_loss", "spike_score_cum",
                             "max_grad_norm", "skipped_steps", "final_train_loss"]
    first, second = rows
    assert (first["optim.lr"], first["seed"], first["status"]) == ("1e-3", "7", "done")
    assert float(first["final_val_loss"]) == spiky[5]["val_loss"]
    assert float(first["spike_score_cum"]) == pytest.approx(1 / 6)
    assert float(first["max_grad_norm"]) == pytest.approx(20 * (1 + 1 / 3))
    assert first["skipped_steps"] == "1"
    assert float(first["final_train_loss"]) == spiky[5]["loss"]
    assert [second[k] for k in ("final_val_loss", "spike_score_cum", "skipped_steps")] == ["", "", ""]
    markdown = (out / "summary.md").read_text().splitlines()
    assert markdown[0].startswith("| name | optim.lr | seed | status |") and len(markdown) == 4
    assert "| optim.lr=1e-3__seed=7 | 1e-3 | 7 | done |" in markdown[2]


def test_a_failing_variation_is_recorded_and_the_others_still_run(tmp_path, capsys):
    jobs = [(Variation(name, {}, 0), [sys.executable, "-c", script], tmp_path / name)
            for name, script in [("bad", "import sys; print('boom'); sys.exit(3)"), ("good", "print('fine')")]]
    outcomes = run_variations(jobs, parallel=1)
    assert [(o.status, o.exit_code) for o in outcomes] == [("failed", 3), ("ok", 0)]
    assert "boom" in (tmp_path / "bad" / "train.log").read_text()
    assert "exit code 3 (boom)" in capsys.readouterr().out


@pytest.mark.slow
def test_a_real_sweep_of_two_tiny_runs(tiny_dataset, tmp_path, capsys):
    recipe = {
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        "data": {"paths": [str(tiny_dataset)], "seq_len": 32, "val_fraction": 0.1},
        "schedule": {"warmup": 1},
        "trainer": {"steps": 3, "micro_batch_size": 2, "threads": 1, "peak_flops": 1e9},
        "checkpoint": {"every": 0, "save_final": False},
        "eval": {"every": 3, "max_batches": 1, "samples": 0},
        "logging": {"progress": "lines"},
    }
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "sweep"
    argv = ["sweep", str(base), "--grid", "optim.lr=1e-3,1e-2", "--parallel", "2", "--out", str(out)]
    assert main(argv) == 0, [p.read_text()[-2000:] for p in out.glob("*/train.log")]
    rows = read_csv(out / "summary.csv")
    assert [(r["name"], r["status"]) for r in rows] == [("optim.lr=1e-3__seed=0", "ok"),
                                                        ("optim.lr=1e-2__seed=0", "ok")]
    for row in rows:
        run = out / row["name"]
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert float(row["final_val_loss"]) == metrics[-1]["val_loss"]
        assert float(row["final_train_loss"]) == metrics[-1]["loss"]
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == float(row["optim.lr"])
    capsys.readouterr()
    assert main(argv) == 0
    assert "(2 already finished)" in capsys.readouterr().out
    assert {r["status"] for r in read_csv(out / "summary.csv")} == {"done"}
