"""`kiln train --print-config`: every key with its value and its doc, a recipe for the same run; docs from one place."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from kiln.cli import main
from kiln.config import field_docs
from kiln.model.config import ModelConfig
from kiln.train.config import TrainConfig, load_config

RECIPE = Path(__file__).parents[2] / "recipes/stability/olmo0424-aggressive.yaml"
OVERRIDES = ["--optim.lr=1e-3", "--model.d_model=512", "--data.weights=[1.0]", "--data.paths=[somewhere]"]


def _config_classes() -> list[type]:
    sections = [type(getattr(TrainConfig(), f.name)) for f in dataclasses.fields(TrainConfig)]
    return [TrainConfig, ModelConfig, *sections]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_config_field_has_a_doc(cls):
    """A new field without a trailing `# doc` comment fails here."""
    missing = [f.name for f in dataclasses.fields(cls) if not field_docs(cls).get(f.name)]
    assert not missing, f"{cls.__name__} fields without a trailing `# doc` comment: {missing}"


@dataclass
class _Example:
    """Docs come from trailing comments only: not from comment lines, and not from annotated lines in methods."""

    # a comment line above a field is not its doc
    plain: int = 1
    documented: float = 2.0  # the doc: with a '#' inside, and quotes
    spread: dict[str, int] = field(
        default_factory=dict)  # on the last line of a field that spans two
    text: str = "# not a comment"

    def method(self) -> None:
        local: int = 3  # not a field
        del local


def test_field_docs_reads_trailing_comments_of_fields_only():
    assert field_docs(_Example) == {"documented": "the doc: with a '#' inside, and quotes",
                                    "spread": "on the last line of a field that spans two"}


def test_print_config_shows_every_key_its_value_and_its_doc(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--print-config", str(RECIPE), *OVERRIDES, f"--trainer.run_dir={run_dir}"]) == 0
    out = capsys.readouterr().out
    assert not run_dir.exists()
    printed, cfg = yaml.safe_load(out), load_config(RECIPE, [*OVERRIDES, f"--trainer.run_dir={run_dir}"])
    for section in dataclasses.fields(cfg):
        value = getattr(cfg, section.name)
        assert f"\n{section.name}:  # {field_docs(TrainConfig)[section.name]}\n" in out
        if section.name == "model":
            continue
        assert printed[section.name] == cfg.to_dict()[section.name]
        for key, doc in field_docs(type(value)).items():
            assert any(line.startswith(f"  {key}: ") and line.endswith(f"# {doc}") for line in out.splitlines())
    resolved = {key: value for key, value in cfg.model.build(128).to_dict().items() if key != "vocab_size"}
    assert printed["model"] == {"preset": "olmo2-tiny", **resolved}
    model = printed["model"]
    assert (model["n_layers"], model["norm"], model["d_model"]) == (4, "layernorm", 512)  # preset, recipe, flag
    assert f"# vocab_size: unset = the data tokenizer's vocabulary  # {field_docs(ModelConfig)['vocab_size']}" in out


def test_the_printed_config_is_a_recipe_for_the_same_run(tmp_path, capsys):
    assert main(["train", "--print-config", str(RECIPE), *OVERRIDES, "--model.vocab_size=1000"]) == 0
    saved = tmp_path / "printed.yaml"
    saved.write_text(capsys.readouterr().out)
    original, reloaded = load_config(RECIPE, [*OVERRIDES, "--model.vocab_size=1000"]), load_config(saved)
    assert reloaded.model.build(50) == original.model.build(50)
    assert reloaded.model.build(50).vocab_size == 1000
    assert {**reloaded.to_dict(), "model": None} == {**original.to_dict(), "model": None}


def test_train_help_points_to_print_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    assert "kiln train --print-config [RECIPE] [overrides]" in " ".join(capsys.readouterr().out.split())



def test_no_recipe_means_the_main_job_recipe_over_the_defaults(capsys):
    """`kiln train` alone runs kiln/assets/main_job.yaml: every key it sets, and the defaults elsewhere."""
    from kiln.train.config import MAIN_JOB_RECIPE

    assert main(["train", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe, defaults = yaml.safe_load(MAIN_JOB_RECIPE.read_text()), TrainConfig().to_dict()
    assert any(recipe[s][k] != defaults[s].get(k) for s in recipe for k in recipe[s] if s != "model")
    for section, values in recipe.items():
        for key, value in values.items():
            assert printed[section][key] == value, (section, key)
    assert printed["optim"] == {**defaults["optim"], **recipe.get("optim", {})}
