"""The whole VLM path can learn: a tiny model trained by `kiln vlm train` on 8 images answers all 8 perfectly."""

from __future__ import annotations

import json

from kiln.cli import main
from kiln.vlm.batches import write_tokenizer
from kiln.vlm.synth import SynthConfig, load_split, write_dataset


def test_a_tiny_model_learns_eight_images_to_f1_one(tmp_path, capsys):
    data = tmp_path / "data"
    write_dataset(SynthConfig(n=9, seed=12, size=48, val_fraction=0.12, test_n=1, questions_per_image=1), data)
    train = load_split(data, "train")
    assert len(train) == 8 and {"point", "count"} <= {r["asked"] for r in train}  # both scores are exercised
    write_tokenizer(data, train, vocab_size=300)
    run = tmp_path / "run"
    assert main(["vlm", "train", f"--data.paths=[{data}]", f"--trainer.run_dir={run}", "--trainer.steps=200",
                 "--trainer.micro_batch_size=8", "--trainer.threads=2", "--model.n_layers=2", "--model.d_model=64",
                 "--model.n_heads=4", "--model.d_ff=256", "--vision.image_size=48", "--vision.d_model=64",
                 "--vision.n_layers=2", "--vision.n_heads=4", "--optim.lr=3e-3", "--optim.weight_decay=0",
                 "--schedule.name=constant", "--schedule.warmup=10", "--eval.every=0", "--vlm.eval_questions=1",
                 "--checkpoint.every=0", "--logging.progress=lines", "--trainer.log_every=100"]) == 0
    assert main(["vlm", "eval", str(run), str(data), "--split", "train", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["questions"] == 8
    assert result["point_f1"] == 1.0 and result["count_accuracy"] == 1.0
    assert result["diagnosis"]["points"]["number"]["right"] == 1.0  # nothing to explain: every point a hit
    assert result["diagnosis"]["points"]["landing"]["hit"] == 1.0
    answers = [json.loads(line) for line in (tmp_path / "eval" / "answers.jsonl").read_text().splitlines()]
    assert [a["answer"] for a in answers] == [a["truth"] for a in answers]  # every answer, word for word
