import logging
from pathlib import Path

import pytest

from kiln.config import ConfigKeyError, parse_overrides
from kiln.model.config import ConfigError
from kiln.train.config import TrainConfig, load_config

# The ladder's specs and the VLM's recipes are not `kiln train` recipes; tests/ladder and tests/vlm load those.
RECIPES = sorted(p for p in (Path(__file__).parents[2] / "recipes").rglob("*.yaml")
                 if p.parent.name not in ("ladder", "vlm"))


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
                             "--model.d_model=128", "--data.paths=[a, b]", "--data.weights=[0.7, 0.3]"])
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
    ("--trainer.loss_chunk=-1", ["trainer.loss_chunk=-1", "0 or more"]),
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
    with pytest.raises(ConfigKeyError, match="--optim.lr has no value"):
        parse_overrides(["--optim.lr", "--trainer.steps=5"])  # the next flag is not the LR
    with pytest.raises(ConfigKeyError, match="did you mean --trainer.steps=10"):
        parse_overrides(["trainer.steps=10"])
    assert parse_overrides(["--optim.lr", "-1", "--eval.prompts", "[a b]"]) == {"optim": {"lr": -1},
                                                                               "eval": {"prompts": ["a b"]}}


def test_values_are_validated_from_recipes_and_dicts_too(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: -3.0e-4\n")
    with pytest.raises(ConfigKeyError, match=r"optim\.lr=-0\.0003: must be greater than 0"):
        load_config(recipe)
    with pytest.raises(ConfigKeyError, match=r"data\.seq_len=512: must be at most model\.max_seq_len=256"):
        load_config(None, {"model": {"max_seq_len": 256}, "data": {"seq_len": 512}})
    assert load_config(None, {"model": {"max_seq_len": 256}, "data": {"seq_len": 256}}).data.seq_len == 256


def _warnings(caplog, overrides: list[str]) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kiln.train"):
        load_config(None, overrides)
    return [record.getMessage() for record in caplog.records]


def test_a_run_that_ends_inside_its_warmup_is_warned_about_loudly(caplog, monkeypatch):
    """An LR sweep of 20-step runs with warmup 30 would compare runs that never left warmup."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (message,) = _warnings(caplog, ["--trainer.steps=20"])
    assert message.startswith("warning: schedule.warmup=30 steps") and "trainer.steps=20" in message
    assert len(_warnings(caplog, ["--trainer.steps=30"])) == 1
    assert _warnings(caplog, ["--trainer.steps=31"]) == []
    assert _warnings(caplog, ["--trainer.steps=5", "--schedule.warmup=0"]) == []


def test_warmup_in_tokens_counts_the_tokens_of_every_rank(caplog, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = ["--schedule.units=tokens", "--trainer.steps=2", "--trainer.micro_batch_size=1", "--data.seq_len=8"]
    assert _warnings(caplog, [*run, "--schedule.warmup=15"]) == []  # 2 steps x 8 tokens = 16
    assert "the run's 16 tokens" in _warnings(caplog, [*run, "--schedule.warmup=16"])[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _warnings(caplog, [*run, "--schedule.warmup=16"]) == []


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


def test_a_new_preset_on_the_command_line_is_that_preset_whole(caplog):
    """The main job's model fields (2 layers, init 0.06) were chosen for its preset: naming another one drops them,
    says so, and keeps the fields set alongside the new preset."""
    from kiln.model.presets import preset
    from kiln.train.config import MAIN_JOB_RECIPE

    main = load_config(MAIN_JOB_RECIPE).model.build(vocab_size=8192)
    with caplog.at_level(logging.INFO, logger="kiln.train"):
        other = load_config(MAIN_JOB_RECIPE, ["--model.preset=olmo2-150m"]).model.build(vocab_size=8192)
    assert other == preset("olmo2-150m", vocab_size=8192)
    assert (main.n_layers, main.init_std) != (other.n_layers, other.init_std)
    assert "dropped the model fields set for olmo2-tiny" in caplog.text and "n_layers=" in caplog.text

    deeper = load_config(MAIN_JOB_RECIPE, ["--model.preset=olmo2-150m", "--model.n_layers=3"]).model.build(8192)
    assert deeper == preset("olmo2-150m", vocab_size=8192, n_layers=3)
    same = load_config(MAIN_JOB_RECIPE, ["--model.preset=olmo2-tiny"]).model.build(vocab_size=8192)
    assert same == main
