"""kiln vlm train/eval/point end to end on a tiny model: the text trainer's checkpoints, resume and metrics, with
the evaluator's pointing and counting scores at every evaluation step."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from kiln.cli import main
from kiln.vlm.batches import TOKENIZER_FILE, write_tokenizer
from kiln.vlm.evaluate import answer_records
from kiln.vlm.model import load_vlm
from kiln.vlm.points import parse_points
from kiln.vlm.synth import SynthConfig, load_split, write_dataset
from kiln.vlm.train import build_vlm_run, load_vlm_config

TINY = ["--model.n_layers=1", "--model.d_model=32", "--model.n_heads=2", "--model.d_ff=64", "--vision.image_size=48",
        "--vision.d_model=16", "--vision.n_layers=1", "--vision.n_heads=2", "--trainer.micro_batch_size=4",
        "--trainer.threads=1", "--eval.every=4", "--eval.max_batches=2", "--checkpoint.every=4",
        "--checkpoint.keep_last=0", "--vlm.eval_questions=6", "--vlm.max_answer_tokens=24", "--schedule.warmup=2",
        "--logging.progress=lines", "--trainer.log_every=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vlmdata")
    write_dataset(SynthConfig(n=24, seed=5, size=48, test_n=6), out)
    write_tokenizer(out, load_split(out, "train"), vocab_size=300)
    return out


def _train(data: Path, run: Path, steps: int, *extra: str) -> int:
    return main(["vlm", "train", f"--data.paths=[{data}]", f"--trainer.run_dir={run}", f"--trainer.steps={steps}",
                 *TINY, *extra])


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_checkpoints_scores_and_resumes_as_if_never_stopped(data, tmp_path, capsys):
    # a constant LR after warmup, so a 4-step run is the first half of the 8-step one
    assert _train(data, tmp_path / "whole", 8, "--schedule.name=constant") == 0
    printed = capsys.readouterr().out
    assert "step 4: val_loss" in printed and "val_point_f1" in printed and "val_count_accuracy" in printed
    whole = _metrics(tmp_path / "whole")
    assert [m["step"] for m in whole] == list(range(1, 9))
    assert {m["step"] for m in whole if "val_point_f1" in m} == {4, 8}
    assert (tmp_path / "whole" / "step000004").is_dir() and (tmp_path / "whole" / "step000008").is_dir()

    assert _train(data, tmp_path / "split", 4, "--schedule.name=constant") == 0
    assert _train(data, tmp_path / "split", 8, "--schedule.name=constant") == 0
    assert "resuming" in capsys.readouterr().out
    split = _metrics(tmp_path / "split")
    assert [m["loss"] for m in split] == [m["loss"] for m in whole]  # same batches, same weights, same order
    assert split[-1]["val_loss"] == whole[-1]["val_loss"]


def test_a_resume_with_other_settings_says_and_logs_what_changed(data, tmp_path, capsys):
    assert _train(data, tmp_path / "run", 2, "--schedule.name=constant") == 0
    assert _train(data, tmp_path / "run", 4, "--schedule.name=constant", "--trainer.precision=bf16") == 0
    printed = capsys.readouterr().out
    assert "config changed since the run's last start" in printed
    assert "trainer.precision: 'fp32' -> 'bf16'" in printed and "trainer.steps: 2 -> 4" in printed
    [change] = [json.loads(line) for line in (tmp_path / "run" / "config_changes.jsonl").read_text().splitlines()]
    assert change["step"] == 2 and change["changes"]["trainer.precision"] == ["fp32", "bf16"]
    assert (tmp_path / "run" / change["previous"]).is_file()  # the config it ran under until then
    assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2, 3, 4]


def test_the_object_loss_is_logged_and_the_same_under_gradient_accumulation(data, tmp_path, capsys):
    assert _train(data, tmp_path / "one", 3, "--schedule.name=constant") == 0
    assert _train(data, tmp_path / "two", 3, "--schedule.name=constant", "--trainer.micro_batch_size=2",
                  "--trainer.grad_accum=2") == 0
    assert "object_loss" in capsys.readouterr().out
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert all(m["object_loss"] > 0 for m in one)
    for a, b in zip(one, two, strict=True):  # two half batches weigh the same rows as one whole batch
        assert b["object_loss"] == pytest.approx(a["object_loss"], rel=1e-4)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert _train(data, tmp_path / "off", 2, "--vision.object_loss=0") == 0
    assert all("object_loss" not in m for m in _metrics(tmp_path / "off"))
    # hue-rotated copies of half the batch add a shape term (a cross-entropy, so > 0) to the same first batch's loss
    assert _train(data, tmp_path / "hue", 1, "--schedule.name=constant", "--vision.shape_hue_share=0.5") == 0
    assert _metrics(tmp_path / "hue")[0]["object_loss"] > one[0]["object_loss"]
    assert load_vlm(tmp_path / "hue")[0].cfg.vision.shape_hue_share == 0.5


def test_the_chunked_loss_scores_the_answers_alone_as_whole_logits_do(data, tmp_path):
    """The decoder hands the chunked loss the text positions only, not the image tokens before them; activation
    checkpointing of the decoder's blocks changes nothing either."""
    assert _train(data, tmp_path / "whole", 3, "--trainer.loss_chunk=0") == 0
    assert _train(data, tmp_path / "chunked", 3, "--trainer.loss_chunk=5",
                  "--trainer.activation_checkpointing=true") == 0
    for a, b in zip(_metrics(tmp_path / "whole"), _metrics(tmp_path / "chunked"), strict=True):
        for key in ("loss", "z_loss", "object_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), key


def test_a_run_continues_on_new_data_from_another_runs_checkpoint(data, tmp_path, capsys):
    """A fork onto a second dataset (same tokenizer, other images): refused while it would take the old data
    position, which names the way out; with init_data_position=false it carries the weights and step on."""
    other = tmp_path / "other"
    write_dataset(SynthConfig(n=30, seed=6, size=48, test_n=6), other)
    shutil.copy(data / TOKENIZER_FILE, other / TOKENIZER_FILE)
    assert _train(data, tmp_path / "first", 4) == 0
    fork = [f"--checkpoint.init_from={tmp_path / 'first' / 'step000004'}"]
    assert _train(other, tmp_path / "refused", 6, *fork) == 2
    assert "checkpoint.init_data_position=false" in capsys.readouterr().err
    assert _train(other, tmp_path / "second", 6, *fork, "--checkpoint.init_data_position=false") == 0
    assert f"(starting from {tmp_path / 'first' / 'step000004'} by checkpoint.init_from)" in capsys.readouterr().out
    assert [m["step"] for m in _metrics(tmp_path / "second")] == [5, 6]
    assert len(load_split(other, "train")) != len(load_split(data, "train"))


def test_eval_writes_scores_answers_and_a_gallery_and_point_draws(data, tmp_path, capsys):
    assert _train(data, tmp_path / "run", 4) == 0
    capsys.readouterr()
    assert main(["vlm", "eval", str(tmp_path / "run"), str(data), "--out", str(tmp_path / "eval")]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "pointing  precision" in printed and "counting  exact" in printed
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    test = load_split(data, "test")
    assert "vlm eval: 100%" in captured.err and f"{len(test)}/{len(test)}" in captured.err  # the progress bar
    assert result["questions"] == len(test) and 0 <= result["point_f1"] <= 1
    assert result["checkpoint"] == str(tmp_path / "run" / "step000004") and result["answer_seconds"] > 0
    assert f"test: {len(test)} questions of {tmp_path / 'run' / 'step000004'}, answered in " in printed
    held_out = {tuple(pair) for pair in json.loads((data / "meta.json").read_text())["held_out"]}
    unseen = sum((r["target"]["colour"], r["target"]["shape"]) in held_out for r in test)
    assert result["unseen_pair"]["questions"] == unseen > 0  # every test image asks about an unseen pair first
    assert result["seen_pair"]["questions"] == len(test) - unseen
    assert "never seen in training" in printed
    diagnosis = result["diagnosis"]
    pointing = sum(r["asked"] in ("point", "count_point") for r in test)
    assert diagnosis["points"]["answers"] == pointing and sum(diagnosis["points"]["number"].values()) == 1
    counting = sum(r["asked"] in ("count", "count_point") for r in test)
    assert diagnosis["counts"]["questions"] == counting and "why counts miss" in printed
    assert diagnosis["vision"]["images"] == len({r["image"] for r in test})
    vision_pairs = diagnosis["vision"]["pairs"]  # the object head on never-seen pairs alone
    assert vision_pairs and set(vision_pairs) <= {f"{c} {s}" for c, s in held_out} and "  never-seen " in printed
    assert "why pointing misses" in printed and "ViT object head alone" in printed and "reads the question" in printed
    assert "names no object at" in printed
    assert "labels naming another object than asked" in printed
    assert diagnosis["reading"]["absent"] == sum(r["count"] == 0 for r in test)
    answers = (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()
    assert [json.loads(a)["id"] for a in answers] == [r["id"] for r in test]
    listed = [len(r["points"]) for r, a in zip(test, answers) if len(r["points"]) >= 2
              and parse_points(json.loads(a)["answer"]) is not None]  # every kind of question, malformed ones aside
    assert diagnosis["missed"]["targets"] == sum(listed)
    assert (tmp_path / "eval" / "gallery.html").read_text().count("<img ") == len(test)

    image = data / test[0]["image"]
    assert main(["vlm", "point", str(tmp_path / "run"), str(image), "Point to the stars.", "--out",
                 str(tmp_path / "p.png")]) == 0
    assert Image.open(tmp_path / "p.png").size == (48 * 4, 48 * 4)
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    assert main(["vlm", "point", str(tmp_path / "run"), str(tmp_path / "small.png"), "Point to the stars."]) == 2
    assert "this model reads 48x48" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"image_size": [32, 32]}))
    assert main(["vlm", "eval", str(tmp_path / "run"), str(other)]) == 2
    assert "holds 32x32 images; the model reads 48x48" in capsys.readouterr().err


def test_a_missing_dataset_says_how_to_make_one(tmp_path, capsys):
    assert main(["vlm", "train", f"--data.paths=[{tmp_path / 'nope'}]", f"--trainer.run_dir={tmp_path / 'r'}"]) == 2
    assert "kiln vlm data --out" in capsys.readouterr().err


def test_activation_checkpointing_reaches_the_decoder_blocks(data, tmp_path):
    cfg = load_vlm_config(None, [f"--data.paths=[{data}]", f"--trainer.run_dir={tmp_path}", *TINY,
                                 "--model.n_layers=2", "--trainer.activation_checkpointing=true",
                                 "--trainer.ac_every=2"])
    blocks = build_vlm_run(cfg).model.text.blocks
    assert [isinstance(b.forward, functools.partial) for b in blocks] == [True, False]


@pytest.mark.parametrize(("setting", "named"), [
    ("--schedule.units=tokens", "schedule.units"),
    ("--model.parametrization=mup", "model.parametrization=mup"),
    ("--vision.image_size=32", "holds 48x48 images; the model reads 32x32"),
])
def test_settings_a_vlm_run_cannot_honour_are_refused_by_name(data, tmp_path, capsys, setting, named):
    assert _train(data, tmp_path / "run", 2, setting) == 2
    assert named in capsys.readouterr().err and not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_run_under_torchrun_is_refused_before_it_writes(data, tmp_path, capsys, monkeypatch):
    """Two ranks would each train a copy and race on one run folder (a real torchrun crashed at its checkpoint)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _train(data, tmp_path / "run", 2) == 2
    assert "torchrun started 2" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_whole_split_text_evaluation_is_refused_for_a_vlm(tmp_path, capsys):
    assert main(["vlm", "train", "--eval.full_at_end=true", f"--trainer.run_dir={tmp_path / 'r'}"]) == 2
    assert "eval.full_at_end" in capsys.readouterr().err


def test_a_prefix_lm_run_trains_scores_and_saves_its_attention(data, tmp_path, capsys):
    """`vlm.prefix_lm`: the trainer hands the model each row's question length (its first loss differs from the
    causal model's, same weights and batch), evaluation answers with it, and the checkpoint remembers it. Two
    layers: with one, the answer reads the same keys and values either way (only question positions change)."""
    assert _train(data, tmp_path / "causal", 4, "--model.n_layers=2") == 0
    assert _train(data, tmp_path / "prefix", 4, "--model.n_layers=2", "--vlm.prefix_lm=true") == 0
    assert "step 4: val_loss" in capsys.readouterr().out
    causal, prefix = _metrics(tmp_path / "causal"), _metrics(tmp_path / "prefix")
    assert prefix[0]["loss"] != causal[0]["loss"] and "val_point_f1" in prefix[-1]
    assert load_vlm(tmp_path / "prefix" / "step000004")[0].cfg.prefix_lm is True
    assert load_vlm(tmp_path / "causal" / "step000004")[0].cfg.prefix_lm is False


def test_answering_reports_progress_after_each_batch(data, tmp_path):
    assert _train(data, tmp_path / "run", 2) == 0
    model, tok = load_vlm(tmp_path / "run")
    records = load_split(data, "test")[:7]
    calls = []
    answers = answer_records(model, tok, data, records, batch_size=3, max_new_tokens=4,
                             progress=lambda done, total: calls.append((done, total)))
    assert len(answers) == 7 and calls == [(3, 7), (6, 7), (7, 7)]


def _restricted(config: dict, keys_of: dict) -> dict:
    """`config` cut down to the keys `keys_of` has, at every depth."""
    return {k: _restricted(config[k], v) if isinstance(v, dict) else config.get(k) for k, v in keys_of.items()}


def test_the_pointing_recipe_is_the_documented_run_19_bar_its_folder_and_kept_checkpoint():
    """recipes/vlm/pointing.yaml reproduces the run docs/vlm.md reports (its config.yaml, committed beside it): every
    setting run 19 had, defaults included, is the recipe's too; settings added since are not in question. Run 19
    also kept its step-5,000 checkpoint for run 20's fork, which changes no training."""
    import yaml

    root = Path(__file__).parents[2]
    recipe = load_vlm_config(root / "recipes/vlm/pointing.yaml").to_dict()
    run19 = yaml.safe_load((root / "docs/vlm/run19/config.yaml").read_text())
    assert recipe["trainer"].pop("run_dir") == "runs/vlm-pointing"
    assert run19["trainer"].pop("run_dir") == "runs/vlm19"
    assert run19["checkpoint"]["keep_steps"] == [5000]
    run19["checkpoint"]["keep_steps"] = recipe["checkpoint"]["keep_steps"]
    assert _restricted(recipe, run19) == run19
