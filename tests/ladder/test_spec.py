"""The ladder plan: shapes, LR and batch from N, and each rung's main run and decay branches."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import ConfigKeyError
from kiln.ladder.spec import (
    HeldOut,
    LadderSpec,
    PowerLaw,
    ShapeRule,
    format_count,
    load_spec,
    model_shape,
    plan_ladder,
    run_steps,
)
from kiln.model.config import ModelConfig, param_counts
from kiln.model.presets import PRESETS
from kiln.train.config import load_config


def _spec(tiny_dataset, **extra) -> LadderSpec:
    train = {"data": {"paths": [str(tiny_dataset)], "seq_len": 32}}
    return LadderSpec(**{"sizes": [4000, 16000, 64000], "train": train, **extra})


def test_the_published_formulas_give_their_reference_values_at_108m():
    spec = LadderSpec(sizes=[1])
    assert spec.lr(108e6) == pytest.approx(0.0047)
    assert spec.batch_sequences(108e6) * spec.batch_sequence_length == pytest.approx(160 * 2048)
    assert spec.lr(8 * 108e6) == pytest.approx(0.0047 / 2)  # N^(-1/3)
    assert spec.batch_sequences(8 * 108e6) == pytest.approx(160 * 4)  # N^(2/3)


@pytest.mark.parametrize("target", [3000, 20000, 150000, 1_000_000])
def test_model_shape_is_the_nearest_width_at_its_depth_and_reports_the_exact_count(target):
    rule = ShapeRule(aspect_ratio=16, head_dim=8, mlp_ratio=4)
    base = {k: v for k, v in PRESETS["olmo2-tiny"].items() if k != "vocab_size"}
    shape, n = model_shape(target, rule, 512, base)
    assert n == param_counts(ModelConfig(**{**base, "vocab_size": 512, **shape}))["non_embedding"]
    assert shape["d_model"] % 8 == 0 and shape["n_heads"] * 8 == shape["d_model"]
    for other in (shape["d_model"] - 8, shape["d_model"] + 8):  # no neighbouring width is closer
        if other > 0:
            count = param_counts(ModelConfig(**{**base, "vocab_size": 512, **shape, "d_model": other,
                                                "n_heads": other // 8, "d_ff": 4 * other}))["non_embedding"]
            assert abs(n - target) <= abs(count - target)
    assert abs(n - target) / target < 0.5


def test_deeper_and_wider_as_n_grows():
    rule, base = ShapeRule(aspect_ratio=16, head_dim=8), {k: v for k, v in PRESETS["olmo2-tiny"].items()
                                                          if k != "vocab_size"}
    shapes = [model_shape(n, rule, 512, base)[0] for n in (5e3, 5e4, 5e5, 5e6)]
    assert [s["n_layers"] for s in shapes] == sorted(s["n_layers"] for s in shapes)
    assert shapes[-1]["n_layers"] > shapes[0]["n_layers"] and shapes[-1]["d_model"] > shapes[0]["d_model"]


def test_steps_are_whole_multiples_of_the_decay_so_it_starts_on_a_step():
    assert run_steps(10_000, 100, 0.1) == 100
    assert run_steps(10_400, 100, 0.1) == 100 and run_steps(10_600, 100, 0.1) == 110
    assert run_steps(10, 100, 0.1) == 10  # never shorter than one decay


def test_plan_forks_every_shorter_duration_from_the_longest_run(tiny_dataset):
    rungs = plan_ladder(_spec(tiny_dataset, heldout=HeldOut([256000], [1.0])))
    assert [r.heldout for r in rungs] == [False, False, False, True]
    for rung in rungs:
        main = rung.main
        assert main.multiple == max(r.multiple for r in rung.runs) and main.fork_step is None
        for run in rung.runs:
            tokens = run.steps * rung.sequences * 32
            assert tokens == pytest.approx(run.multiple * 20 * rung.n, rel=0.3)
            if run is not main:
                assert run.fork_step == run.steps - run.steps // 10 and run.fork_step < main.steps
    assert rungs[0].lr > rungs[1].lr > rungs[2].lr
    assert rungs[0].sequences <= rungs[1].sequences <= rungs[2].sequences


def test_spec_errors_name_the_key(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("sizes: [1000]\nmultipls: [1]\n")
    with pytest.raises(ConfigKeyError, match="multipls"):
        load_spec(path)
    path.write_text("multiples: [1]\n")
    with pytest.raises(ConfigKeyError, match="sizes"):
        load_spec(path)
    path.write_text("sizes: [1000]\nmultiples: [0, 1]\n")
    with pytest.raises(ConfigKeyError, match="multiples"):
        load_spec(path)


def test_power_law_is_coefficient_times_ratio_to_the_exponent():
    law = PowerLaw(2.0, 0.5, reference_params=100.0)
    assert law(400.0) == pytest.approx(4.0)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[2] / "recipes" / "ladder").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_ladder_spec_loads_with_a_valid_train_recipe(path):
    spec = load_spec(path)
    cfg = load_config(None, spec.train)
    assert cfg.data.seq_len > 0 and len(spec.sizes) >= 5
    assert min(spec.heldout.sizes) >= 4 * max(spec.sizes)  # the proof's held-out model is 4x the top rung


def test_sizes_that_round_to_one_model_are_refused_by_name(tiny_dataset):
    with pytest.raises(ConfigKeyError, match="n6k and n7k round to the same model"):
        plan_ladder(_spec(tiny_dataset, sizes=[6000, 7000], shape=ShapeRule(aspect_ratio=16, head_dim=16)))


def test_min_layers_is_a_depth_floor():
    base = {k: v for k, v in PRESETS["olmo2-tiny"].items() if k != "vocab_size"}
    assert model_shape(5000, ShapeRule(aspect_ratio=16, head_dim=8), 512, base)[0]["n_layers"] == 1
    assert model_shape(5000, ShapeRule(aspect_ratio=16, head_dim=8, min_layers=2), 512, base)[0]["n_layers"] == 2


@pytest.mark.parametrize("n, text", [(950, "950"), (6250, "6.25k"), (1.5e6, "1.5M"), (1.43e9, "1.43B"), (2e12, "2T")])
def test_counts_are_written_with_the_largest_fitting_unit(n, text):
    assert format_count(n) == text
