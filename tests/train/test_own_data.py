"""The newcomer's road: train on one text file, validation off, prompts from the data, explicit resumes, and the
public Python API on the result."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest

import kiln
from kiln.cli import main
from kiln.data.dataset import TokenDataset
from kiln.data.loader import InstanceLoader
from kiln.data.prepare import prepare_dataset
from kiln.train.callbacks import Evaluator
from kiln.train.run import build_run, train

from .conftest import tiny_config

WORDS = "the river holds a stone and the night speaks of old light to the young queen".split()


@pytest.fixture(scope="module")
def one_file(tiny_dataset, tmp_path_factory):
    """A dataset made from one .txt file: one document of about 3,000 tokens."""
    root = tmp_path_factory.mktemp("notes")
    rng = np.random.default_rng(0)
    text = "\n\n".join(" ".join(rng.choice(WORDS, size=30)).capitalize() + "." for _ in range(60))
    (root / "notes.txt").write_text(text)
    return prepare_dataset([root / "notes.txt"], root / "data", tiny_dataset / "tokenizer.json", workers=0,
                           progress=False)


def _lines(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_text_file_trains_holding_out_the_tail_of_its_tokens(one_file, tmp_path, caplog):
    caplog.set_level("INFO", logger="kiln.train")
    ds = TokenDataset.open(one_file)
    assert ds.num_documents == 1
    run = train(tiny_config(one_file, tmp_path / "run"))
    assert "is one document: its last" in caplog.text
    val = InstanceLoader(ds, seq_len=32, batch_size=4, split="val", val_fraction=0.1)
    train_view, val_view = run.train_loader.views[0], val.views[0]
    assert train_view.num_tokens + val_view.num_tokens == ds.num_tokens
    tail = ds.tokens(ds.num_tokens - val_view.num_tokens, ds.num_tokens)
    assert np.array_equal(val_view.read(0, val_view.num_tokens), tail)  # validation is the end of the document
    assert np.array_equal(train_view.read(0, train_view.num_tokens), ds.tokens(0, train_view.num_tokens))
    assert val_view.num_tokens == round(0.1 * ds.num_tokens)
    assert all("val_loss" in m for m in _lines(tmp_path / "run") if m["step"] in (3, 6))


def test_validation_off_builds_no_validation_loader(one_file, tmp_path):
    cfg = tiny_config(one_file, tmp_path / "run", data={"val_fraction": 0.0}, eval={"every": 0})
    run = build_run(cfg)
    assert not any(isinstance(cb, Evaluator) for cb in run.trainer.callbacks)
    train(cfg)
    assert not any(key.startswith("val_") for m in _lines(tmp_path / "run") for key in m)


def test_default_prompts_are_the_opening_words_of_held_out_documents(tiny_dataset, tmp_path):
    run = train(tiny_config(tiny_dataset, tmp_path / "run", eval={"prompts": None, "samples": 2}))
    val_loader = next(cb for cb in run.trainer.callbacks if isinstance(cb, Evaluator)).val_loader
    tokenizer = val_loader.sources[0].tokenizer
    opening = " ".join(tokenizer.decode(val_loader.views[0].read(0, 32).tolist()).split()[:4])
    samples = (tmp_path / "run/samples.txt").read_text().split("\n\n---\n\n")
    assert len(samples) == 2 and samples[0].startswith(opening) and len(opening.split()) == 4
    assert train(tiny_config(tiny_dataset, tmp_path / "given", eval={"prompts": ["The king"]}))
    assert (tmp_path / "given/samples.txt").read_text().startswith("The king")


def test_a_resume_with_another_config_says_and_records_what_changed(tiny_dataset, tmp_path, capsys):
    train(tiny_config(tiny_dataset, tmp_path / "run"))
    first = (tmp_path / "run/config.yaml").read_text()
    capsys.readouterr()
    train(tiny_config(tiny_dataset, tmp_path / "run", trainer={"steps": 9}, optim={"lr": 5e-3}))
    out = capsys.readouterr().out
    assert "optim.lr: 0.01 -> 0.005" in out and "trainer.steps: 6 -> 9" in out
    assert "cosine schedule is reshaped from step 6" in out
    assert (tmp_path / "run/config.6.yaml").read_text() == first
    record = json.loads((tmp_path / "run/config_changes.jsonl").read_text())
    assert record["step"] == 6 and record["changes"] == {"optim.lr": [0.01, 0.005], "trainer.steps": [6, 9]}
    assert "steps: 9" in (tmp_path / "run/config.yaml").read_text()


def test_a_finished_run_run_again_rewrites_nothing(tiny_dataset, tmp_path, capsys):
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    train(cfg)
    files = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    train(cfg)
    assert "run complete at step 6" in capsys.readouterr().out
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == files


def test_resume_flag_on_an_empty_folder_leaves_nothing(tmp_path, capsys):
    run_dir = tmp_path / "nothing-here"
    assert main(["train", "--resume", f"--trainer.run_dir={run_dir}", "--trainer.steps=40"]) == 2
    assert "holds no complete checkpoint" in capsys.readouterr().err
    assert not run_dir.exists()


def test_the_python_api_loads_model_and_tokenizer_and_generates(tiny_dataset, tmp_path):
    assert dir(kiln) == ["__version__", "from_pretrained", "generate_text", "load_tokenizer"]
    train(tiny_config(tiny_dataset, tmp_path / "run"))
    model, tokenizer = kiln.from_pretrained(tmp_path / "run"), kiln.load_tokenizer(tmp_path / "run")
    texts = kiln.generate_text(model, tokenizer, ["The king", "A river"], max_new_tokens=5, seed=0)
    assert texts[0].startswith("The king") and texts[1].startswith("A river")
    expected = kiln.generate.generate(model, [tokenizer.encode("The king").ids], 5, eos_id=0, vocab_size=320)
    assert texts[0] == tokenizer.decode(tokenizer.encode("The king").ids + expected[0], skip_special_tokens=False)
    bare = shutil.copytree(tmp_path / "run/step000006", tmp_path / "bare")
    (bare / "tokenizer.json").unlink()
    with pytest.raises(kiln.errors.KilnError, match="no tokenizer.json"):
        kiln.load_tokenizer(bare)


def test_weights_files_are_as_readable_as_the_rest(tiny_dataset, tmp_path):
    train(tiny_config(tiny_dataset, tmp_path / "run", trainer={"steps": 3}))
    assert main(["export", "hf", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    for folder in (tmp_path / "run/step000003", tmp_path / "hf"):
        expected = stat.S_IMODE(os.stat(folder / ("model.json" if folder.name != "hf" else "config.json")).st_mode)
        assert stat.S_IMODE(os.stat(folder / "model.safetensors").st_mode) == expected, folder


def test_prepare_counts_one_document_in_the_singular(one_file, tiny_dataset, tmp_path, capsys):
    assert main(["prepare", str(one_file.parent / "notes.txt"), "--out", str(tmp_path / "ds"), "--tokenizer",
                 str(tiny_dataset / "tokenizer.json"), "--workers", "0", "--no-progress"]) == 0
    assert "\n1 document, " in "\n" + capsys.readouterr().out
