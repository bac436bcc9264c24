"""`kiln train` refuses every bad value and malformed command line before work starts: exit 2, one stderr line."""

from pathlib import Path

import pytest
import yaml

from kiln.cli import main
from kiln.config import split_overrides

TINY = str(Path(__file__).parents[2] / "recipes/tiny.yaml")


@pytest.mark.parametrize("argv, words", [
    (["--trainer.steps=0"], ["trainer.steps=0", "greater than 0"]),
    (["--trainer.steps=-3"], ["trainer.steps=-3"]),
    (["--optim.lr=0"], ["optim.lr=0.0", "greater than 0"]),
    (["--optim.lr=-1"], ["optim.lr=-1.0"]),
    (["--optim.lr", "-1"], ["optim.lr=-1.0"]),
    (["--trainer.micro_batch_size=0"], ["trainer.micro_batch_size=0"]),
    (["--trainer.grad_accum=-1"], ["trainer.grad_accum=-1"]),
    (["--data.seq_len=0"], ["data.seq_len=0"]),
    (["--data.seq_len=8192"], ["data.seq_len=8192", "model.max_seq_len=4096"]),
    (["--data.seq_len=256", "--model.max_seq_len=128"], ["data.seq_len=256", "model.max_seq_len=128"]),
    (["--eval.every=-1"], ["eval.every=-1", "0 or more"]),
    (["--checkpoint.every=-5"], ["checkpoint.every=-5"]),
    (["--trainer.log_every=-1"], ["trainer.log_every=-1"]),
    (["--trainer.log_every=0"], ["trainer.log_every=0"]),
    (["--data.val_fraction=1"], ["data.val_fraction=1.0", "[0, 1)"]),
    (["--data.val_fraction=-0.1"], ["data.val_fraction=-0.1"]),
    (["--data.paths=[a, b]", "--data.weights=[1]"], ["data.weights=[1.0]", "2 paths"]),
    (["--data.weights=[0.5]"], ["data.weights=[0.5]", "0 paths"]),
    (["--data.paths=[a, b]", "--data.weights=[1, -1]"], ["data.weights=[1.0, -1.0]", "non-negative"]),
    (["--schedule.warmup=-1"], ["schedule.warmup=-1"]),
    (["--schedule.min_lr_ratio=2"], ["schedule.min_lr_ratio=2.0", "[0, 1]"]),
    (["--optim.betas=[0.9, 1.0]"], ["optim.betas=[0.9, 1.0]", "[0, 1)"]),
    (["--optim.eps=0"], ["optim.eps=0.0"]),
    (["--optim.weight_decay=-0.1"], ["optim.weight_decay=-0.1"]),
    (["--optim.grad_clip=0"], ["optim.grad_clip=0.0"]),
    (["--watchdog.slow_factor=1"], ["watchdog.slow_factor=1.0", "greater than 1"]),
    (["--stability.window=1"], ["stability.window=1", "2 or more"]),
    (["--stability.rollback_lr_factor=0"], ["stability.rollback_lr_factor=0.0", "(0, 1]"]),
    (["--optim.lr", "--trainer.steps=5"], ["--optim.lr has no value", "--optim.lr=VALUE"]),
    (["--trainer.steps"], ["--trainer.steps has no value"]),
    (["trainer.steps=10"], ["did you mean the override --trainer.steps=10?"]),
    ([TINY, "trainer.steps=10"], ["'trainer.steps=10'", "did you mean --trainer.steps=10?"]),
])
def test_a_bad_value_is_refused_in_one_line_naming_it(argv, words, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", f"--trainer.run_dir={run_dir}", *argv]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln train: error: "), lines
    for word in words:
        assert word in lines[0]
    assert not run_dir.exists()


def test_a_separate_value_goes_with_its_flag_and_not_to_the_recipe(tmp_path, capsys):
    """argparse alone gave "5", "[Hello there]" or "-1.5" to the recipe positional; each is its flag's value."""
    run_dir = tmp_path / "my run"
    assert main(["train", "--print-config", "--trainer.steps", "50", "--eval.prompts", "[Hello there, Once upon]",
                 "--trainer.run_dir", str(run_dir), "--stability.k", "-1.5"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["steps"] == 50
    assert printed["eval"]["prompts"] == ["Hello there", "Once upon"]
    assert printed["trainer"]["run_dir"] == str(run_dir)
    assert printed["stability"]["k"] == -1.5


def test_overrides_after_a_recipe_and_both_spellings_agree(capsys):
    assert main(["train", "--print-config", TINY, "--trainer.steps", "50", "--optim.lr=1e-3"]) == 0
    spaced = capsys.readouterr().out
    assert main(["train", "--print-config", "--trainer.steps=50", TINY, "--optim.lr", "1e-3"]) == 0
    assert capsys.readouterr().out == spaced
    assert yaml.safe_load(spaced)["optim"]["lr"] == 1e-3


def test_split_overrides_leaves_other_words_and_everything_after_a_double_dash():
    rest, overrides = split_overrides(["sweep", "base.yaml", "--grid", "optim.lr=1,2", "--optim.eps", "-1e-8",
                                       "--trainer.steps", "--", "--trainer.seed", "3"])
    assert rest == ["sweep", "base.yaml", "--grid", "optim.lr=1,2", "--", "--trainer.seed", "3"]
    assert overrides == ["--optim.eps=-1e-8", "--trainer.steps"]


def test_a_command_without_overrides_still_refuses_them(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "runs/x", "--optim.lr", "1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --optim.lr=1" in capsys.readouterr().err
