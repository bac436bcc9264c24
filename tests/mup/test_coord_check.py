"""The coordinate check on the tiny dataset: muP's activations keep their size across widths, standard's grow."""

from __future__ import annotations

import json

import pytest
import yaml

from kiln.cli import main
from kiln.mup.coord_check import CoordResult, coord_check, width_config

WIDTHS = [64, 128, 256]  # at 32 (head dimension 8) finite-width effects reach the band


@pytest.fixture(scope="module")
def recipe(tiny_dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("coord") / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"n_layers": 2, "n_heads": 4, "d_model": 32, "d_ff": 96, "mup_base_d_model": 32},
        "data": {"paths": [str(tiny_dataset)], "seq_len": 32},
        "optim": {"lr": 4e-3}, "trainer": {"micro_batch_size": 8, "threads": 1},
    }))
    return path


@pytest.fixture(scope="module")
def result(recipe) -> CoordResult:
    return coord_check(recipe, WIDTHS, steps=3, seeds=2, report=lambda line: None)


def test_mup_passes_and_standard_fails(result):
    assert result.passes("mup"), result.violations("mup")
    assert not result.passes("standard")
    # standard's failures are growth with width (Adam's update of a d-wide matrix), not noise in either direction
    grown = [slope for _, step, slope in result.violations("standard") if step >= 1]
    assert len(grown) >= 7 and all(slope > 0.25 for slope in grown)


def test_every_activation_and_step_is_recorded_for_every_width_and_seed(result):
    activations = {f"block{i}.{kind}" for i in range(2) for kind in ("attn", "mlp", "residual")} | {"logits"}
    assert set(result.values) == {(p, a, s) for p in ("standard", "mup") for a in activations for s in range(4)}
    for by_width in result.values.values():
        assert sorted(by_width) == WIDTHS
        assert all(len(seeds) == 2 and all(v > 0 for v in seeds) for seeds in by_width.values())


def test_the_mlp_widens_with_the_model(recipe):
    cfg = width_config(recipe, [], 128, "mup", 32, seed=1)
    model = cfg.model.build(vocab_size=320)
    assert (model.d_model, model.d_ff, model.width_mult, cfg.trainer.seed) == (128, 384, 4.0, 1)


def test_cli_writes_the_table_plot_and_verdicts(recipe, tmp_path, capsys):
    out = tmp_path / "cc"
    code = main(["mup", "coord-check", str(recipe), "--widths", "64,128,256", "--steps", "1", "--seeds", "2",
                 "--parametrizations", "mup", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "mup: PASS" in printed and "[6/6] mup width 256 seed 1" in printed
    data = json.loads((out / "coord_check.json").read_text())
    assert data["verdicts"] == {"mup": True} and data["widths"] == [64, 128, 256]
    assert (out / "coord_check.png").stat().st_size > 10_000
    assert "| mup | logits |" in (out / "coord_check.md").read_text()


@pytest.mark.parametrize("args, named", [
    (["--widths", "64"], "at least two different"),
    (["--widths", "32,64", "--steps", "0"], "--steps"),
    (["--widths", "32,64", "--parametrizations", "mup,sp"], "--parametrizations"),
])
def test_bad_arguments_are_named(recipe, args, named, capsys):
    assert main(["mup", "coord-check", str(recipe), *args]) == 2
    assert named in capsys.readouterr().err
