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
from kiln.experiments.jobs import Job, Variation
from kiln.experiments.sweep import (
    parse_grid,
    plan_sweep,
    run_variations,
    split_values,
    sweep,
    write_summary,
)
from kiln.experiments.sweep_progress import SweepProgress, last_step

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
    assert plan[0] == Variation("optim.lr-1e-3__model.qk_norm-none__seed-5",
                                {"optim.lr": "1e-3", "model.qk_norm": "none"}, 5)
    assert [v.name for v in plan[:4]] == [
        "optim.lr-1e-3__model.qk_norm-none__seed-5", "optim.lr-1e-3__model.qk_norm-none__seed-6",
        "optim.lr-1e-3__model.qk_norm-full__seed-5", "optim.lr-1e-3__model.qk_norm-full__seed-6"]
    assert {(v.values["optim.lr"], v.values["model.qk_norm"], v.seed) for v in plan} == {
        (lr, qk, seed) for lr in ("1e-3", "3e-3") for qk in ("none", "full") for seed in (5, 6)}
    assert plan[0].overrides() == ["--optim.lr=1e-3", "--model.qk_norm=none", "--trainer.seed=5"]


def test_grid_values_keep_lists_whole_and_bad_grids_are_refused():
    assert split_values("[0.5,0.5],[0.9, 0.1]") == ["[0.5,0.5]", "[0.9, 0.1]"]
    assert plan_sweep(parse_grid(["data.paths=[a/b]"]), 1)[0].name == "data.paths-_a_b___seed-0"
    for spec, message in [("optim.lr", "must look like"), ("optim.lr=1,", "must look like"),
                          ("trainer.seed=1,2", "--seeds"), ("optim.lr=1,1", "repeats")]:
        with pytest.raises(KilnError, match=message):
            parse_grid([spec])
    with pytest.raises(KilnError, match="twice"):
        parse_grid(["optim.lr=1", "optim.lr=2"])


def test_linked_keys_move_together(base, tmp_path):
    grid = parse_grid(["model.d_model:model.d_ff=64:256,128:512", "optim.lr=1e-3,2e-3"])
    plan = plan_sweep(grid, seeds=1)
    assert len(plan) == 4  # 2 linked pairs x 2 LRs, not 2 x 2 x 2
    assert plan[0].overrides() == ["--model.d_model=64", "--model.d_ff=256", "--optim.lr=1e-3", "--trainer.seed=0"]
    assert plan[2].overrides()[:2] == ["--model.d_model=128", "--model.d_ff=512"]
    with pytest.raises(KilnError, match="links 2 keys.*'64'"):
        parse_grid(["model.d_model:model.d_ff=64,128:512"])
    with pytest.raises(KilnError, match="--seeds"):
        parse_grid(["optim.lr:trainer.seed=1:2"])
    with pytest.raises(KilnError, match="also set model.d_ff"):
        sweep(base, ["model.d_model:model.d_ff=64:256"], out=tmp_path / "s", extra=["--model.d_ff=128"])


def test_a_misspelt_key_or_bad_value_fails_before_anything_runs(base, tmp_path):
    out = tmp_path / "sweep"
    with pytest.raises(KilnError, match=r"optim\.lrr.*did you mean optim\.lr\?"):
        sweep(base, ["optim.lr=1e-3", "optim.lrr=1,2"], out=out)
    with pytest.raises(KilnError, match=r"variation model\.qk_norm-fulll__seed-7: .*not one of none, full"):
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
                                f"--trainer.run_dir={out}/optim.lr-1e-3__seed-7")
    assert not out.exists()


def test_finished_runs_are_not_rerun_and_the_summary_holds_their_metrics(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    spiky = fake_metrics(6, grad_spikes={3}, skipped={3}, val_every=3)
    write_run(out / "optim.lr-1e-3__seed-7", spiky)
    write_run(out / "optim.lr-2e-3__seed-7", fake_metrics(6, monitor=False, val_every=100))
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
    assert "| optim.lr-1e-3__seed-7 | 1e-3 | 7 | done |" in markdown[2]


def test_a_failing_variation_is_recorded_and_the_others_still_run(tmp_path, capsys):
    jobs = [Job(Variation(name, {}, 0), [sys.executable, "-c", script], tmp_path / name, 6)
            for name, script in [("bad", "import sys; print('boom'); sys.exit(3)"), ("good", "print('fine')")]]
    outcomes = run_variations(jobs, parallel=1, progress="lines")
    assert [(o.status, o.exit_code) for o in outcomes] == [("failed", 3), ("ok", 0)]
    assert "boom" in (tmp_path / "bad" / "train.log").read_text()
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [f"[1/2] bad: started; log in {tmp_path / 'bad' / 'train.log'}",
                           f"[1/2] bad: failed with exit code 3 (boom); see {tmp_path / 'bad' / 'train.log'} "
                           "(1 of 2 finished)"]
    assert printed[2] == f"[2/2] good: started; log in {tmp_path / 'good' / 'train.log'}"
    assert printed[3].startswith("[2/2] good: ok in ") and printed[3].endswith(" s (2 of 2 finished)")


def test_last_step_reads_the_end_of_metrics_and_passes_over_a_torn_line(tmp_path):
    assert last_step(tmp_path / "none") is None
    run = write_run(tmp_path / "run", fake_metrics(42, layers=4))
    assert last_step(run) == 42
    assert last_step(run, tail_bytes=300) == 42  # a tail shorter than the file, starting mid-line
    write_run(run, fake_metrics(40, layers=4))
    assert last_step(run, tail_bytes=100) == 40  # a last line longer than the tail
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 41, "lo')
    assert last_step(run) == 40


def test_progress_lines_show_each_new_step_once(tmp_path, capsys):
    jobs = [Job(Variation(name, {}, 0), [], tmp_path / name, 6) for name in ("a", "b")]
    display = SweepProgress(jobs, bar=False, every=30)
    display.started(0)
    display.poll()
    assert capsys.readouterr().out == f"[1/2] a: started; log in {tmp_path / 'a' / 'train.log'}\n"
    write_run(tmp_path / "a", fake_metrics(3))
    write_run(tmp_path / "b", fake_metrics(2))  # not started: not shown
    display.poll()
    display.poll()
    assert capsys.readouterr().out == "[1/2] a: step 3/6\n"
    display.started(1)
    write_run(tmp_path / "a", fake_metrics(5))
    display.poll()
    assert capsys.readouterr().out.splitlines()[1:] == ["[1/2] a: step 5/6", "[2/2] b: step 2/6"]


SLOW_CHILD = """import json, pathlib, sys, time
run = pathlib.Path(sys.argv[1])
run.joinpath("metrics.jsonl").write_text("".join(json.dumps({"step": s}) + "\\n" for s in (1, 2, 3, 4)))
time.sleep(1.5)
"""


def slow_job(tmp_path: Path) -> Job:
    """A child that logs 4 of its 5 steps at once, then runs on for 1.5 s while the sweep polls it."""
    run_dir = tmp_path / "slow"
    return Job(Variation("slow", {}, 0), [sys.executable, "-c", SLOW_CHILD, str(run_dir)], run_dir, 5)


def test_a_running_variation_shows_its_step_in_lines_without_repeating_it(tmp_path, capsys):
    assert run_variations([slow_job(tmp_path)], progress="lines", every=0.1)[0].status == "ok"
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"[1/1] slow: started; log in {tmp_path / 'slow' / 'train.log'}"
    assert printed.count("[1/1] slow: step 4/5") == 1
    assert printed[-1].startswith("[1/1] slow: ok in ")


def test_a_running_variation_shows_its_step_on_the_bar(tmp_path, capsys):
    assert run_variations([slow_job(tmp_path)], progress="bar", every=0.1)[0].status == "ok"
    captured = capsys.readouterr()
    assert "[1/1] slow: step 4/5: " in captured.err and "| 4/5 [" in captured.err  # description and counter
    assert "step 4/5" not in captured.out
    assert captured.out.startswith(f"[1/1] slow: started; log in {tmp_path / 'slow' / 'train.log'}")


def test_a_sweep_begun_with_the_old_folder_names_keeps_its_folders(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    write_run(out / "optim.lr=1e-3__seed=7", fake_metrics(6))  # finished
    write_run(out / "optim.lr=2e-3__seed=7", fake_metrics(4))  # interrupted: resumes in place
    assert sweep(base, ["optim.lr=1e-3,2e-3,3e-3"], out=out, dry_run=True) == 0
    printed = capsys.readouterr().out
    assert "(1 already finished)" in printed and "older kiln" in printed
    commands = [line for line in printed.splitlines() if " -m kiln train " in line]
    assert commands[0].endswith(f"--trainer.run_dir={out}/optim.lr=1e-3__seed=7  # finished, skipped")
    assert commands[1].endswith(f"--trainer.run_dir={out}/optim.lr=2e-3__seed=7")
    assert commands[2].endswith(f"--trainer.run_dir={out}/optim.lr-3e-3__seed-7")
    write_run(out / "optim.lr=2e-3__seed=7", fake_metrics(6))
    assert sweep(base, ["optim.lr=1e-3,2e-3"], out=out) == 0
    assert [(r["name"], r["status"]) for r in read_csv(out / "summary.csv")] == [
        ("optim.lr=1e-3__seed=7", "done"), ("optim.lr=2e-3__seed=7", "done")]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["optim.lr=1e-3__seed=7", "optim.lr=2e-3__seed=7"]


def test_summary_md_keeps_the_digits_that_tell_runs_apart(tmp_path):
    rows = [{"name": "a", "final_val_loss": 7.000086, "max_grad_norm": 1.23456781, "skipped_steps": 0},
            {"name": "b", "final_val_loss": 7.000012, "max_grad_norm": 1.23456789, "skipped_steps": 2},
            {"name": "c", "final_val_loss": None, "max_grad_norm": float("nan"), "skipped_steps": None}]
    csv_path, md_path = write_summary(rows, tmp_path)
    assert md_path.read_text().splitlines()[2:] == ["| a | 7.00009 | 1.2345678 | 0 |",
                                                    "| b | 7.00001 | 1.2345679 | 2 |",
                                                    "| c |  | nan |  |"]
    assert [(r["final_val_loss"], r["max_grad_norm"]) for r in read_csv(csv_path)] == [
        ("7.000086", "1.23456781"), ("7.000012", "1.23456789"), ("", "nan")]


@pytest.mark.slow
def test_a_real_sweep_of_two_tiny_runs(tiny_dataset, tmp_path, capsys):
    recipe = {
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64},
        "data": {"paths": [str(tiny_dataset)], "seq_len": 32, "val_fraction": 0.1},
        "schedule": {"warmup": 1},
        "trainer": {"steps": 3, "micro_batch_size": 2, "threads": 1, "peak_flops": 1e13},
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
    assert [(r["name"], r["status"]) for r in rows] == [("optim.lr-1e-3__seed-0", "ok"),
                                                        ("optim.lr-1e-2__seed-0", "ok")]
    for row in rows:
        run = out / row["name"]
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert float(row["final_val_loss"]) == metrics[-1]["val_loss"]
        assert float(row["final_train_loss"]) == metrics[-1]["loss"]
        assert float(row["held_out_bpb"]) == metrics[-1]["val_full_bpb"]  # the small split is read whole at the end
        assert float(row["wall_s"]) > 0
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == float(row["optim.lr"])
    capsys.readouterr()
    assert main(argv) == 0
    assert "(2 already finished)" in capsys.readouterr().out
    again = read_csv(out / "summary.csv")
    assert {r["status"] for r in again} == {"done"}
    assert "wall_s" not in again[0] and [r["held_out_bpb"] for r in again] == [r["held_out_bpb"] for r in rows]
