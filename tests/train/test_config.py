from pathlib import Path

import pytest

from kiln.config import ConfigKeyError, parse_overrides
from kiln.model.config import ConfigError
from kiln.train.config import TrainConfig, load_config

RECIPES = sorted((Path(__file__).parents[2] / "recipes").rglob("*.yaml"))


def test_recipes_exist():
    assert len(RECIPES) >= 5


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_builds_a_model(recipe):
    cfg = load_config(recipe)
    assert isinstance(cfg, TrainConfig)
    model_cfg = cfg.model.build(vocab_size=8192)
    assert model_cfg.vocab_size >= 8192
    assert cfg.tokens_per_step == cfg.trainer.micro_batch_size * cfg.trainer.grad_accum * cfg.data.seq_len


def test_defaults_are_the_tiny_recipe():
    """`kiln train` with no recipe and recipes/tiny.yaml describe the same job (bar the run folder)."""
    default, tiny = load_config(None), load_config(Path(__file__).parents[2] / "recipes/tiny.yaml")
    tiny.trainer.run_dir = default.trainer.run_dir
    assert default == tiny


def test_dotted_overrides_both_spellings_and_types():
    cfg = load_config(None, ["--optim.lr=1e-3", "--trainer.steps", "7", "--optim.betas=[0.8, 0.9]",
                             "--model.d_model=128", "--data.weights=[0.7, 0.3]"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.trainer.steps == 7
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.model.build(100).d_model == 128
    assert cfg.data.weights == [0.7, 0.3]


def test_int_is_accepted_where_float_is_expected():
    assert load_config(None, ["--optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize("override, words", [
    ("--optim.lrr=1", ["optim.lrr", "optim.lr"]),
    ("--trainer.setps=3", ["trainer.setps", "trainer.steps"]),
    ("--model.d_modle=3", ["model.d_modle", "model.d_model"]),
    ("--optim.lr=fast", ["optim.lr", "float", "fast"]),
    ("--trainer.steps=2.5", ["trainer.steps", "int"]),
    ("--trainer.compile=yes please", ["trainer.compile", "true or false"]),
    ("--trainer.precision=fp8", ["trainer.precision", "fp32", "bf16"]),
    ("--optim.betas=[0.9]", ["optim.betas", "2 items"]),
    ("--nosuchsection.x=1", ["nosuchsection"]),
])
def test_bad_keys_and_types_name_the_key(override, words):
    with pytest.raises(ConfigKeyError) as info:
        load_config(None, [override])
    for word in words:
        assert word in str(info.value)


def test_bad_model_shape_and_preset_are_refused():
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(None, ["--model.n_heads=3"])
    with pytest.raises(ConfigError, match="olmo2-tiny"):
        load_config(None, ["--model.preset=olmo3-huge"])


def test_recipe_errors(tmp_path):
    with pytest.raises(Exception, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\n")
    with pytest.raises(Exception, match="not valid YAML"):
        load_config(bad)
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  warmup: 3\n")
    with pytest.raises(ConfigKeyError, match="optim.warmup"):
        load_config(nested)


def test_override_parsing_errors():
    with pytest.raises(ConfigKeyError):
        parse_overrides(["optim.lr=1"])
    with pytest.raises(ConfigKeyError, match="no value"):
        parse_overrides(["--optim.lr"])


def test_numbers_yaml_reads_as_text_are_numbers_in_recipes_and_overrides(tmp_path):
    """YAML 1.1 reads `1e-3` as a string; a recipe and an override that write it so give the same config."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  grad_clip: 5e-1\ntrainer:\n  steps: 1e2\nmodel:\n  init_std: 2e-2\n")
    from_recipe = load_config(recipe)
    from_flags = load_config(None, ["--optim.lr=1e-3", "--optim.grad_clip=5e-1", "--trainer.steps=1e2",
                                    "--model.init_std=2e-2"])
    assert from_recipe == from_flags
    assert from_recipe.optim.lr == 1e-3 and from_recipe.optim.grad_clip == 0.5
    assert from_recipe.trainer.steps == 100 and isinstance(from_recipe.trainer.steps, int)
    assert from_recipe.model.build(100).init_std == 0.02


def test_text_that_is_no_number_is_still_refused(tmp_path):
    with pytest.raises(ConfigKeyError, match="trainer.steps"):
        load_config(None, ["--trainer.steps=1.5e1x"])
    with pytest.raises(ConfigKeyError, match="trainer.steps"):
        load_config(None, ["--trainer.steps=2.5e0"])
    assert load_config(None, ["--eval.prompts=[1e-3]"]).eval.prompts == ["1e-3"]
