"""kiln renders, from raw dataset rows, the very requests oe-eval rendered for OLMo (committed fixtures)."""

from __future__ import annotations

import json

import pytest

from kiln.eval.formats import format_row
from kiln.eval.sources import load_rows, read_jsonl
from kiln.eval.tasks import FAMILIES, fewshot_prefix, get_task
from tests.eval.conftest import FIXTURES

EXPECTED = [json.loads(line) for line in (FIXTURES / "olmes_requests.jsonl").read_text().splitlines()]
CASES = sorted({(e["task"], e["variant"]) for e in EXPECTED})


def rendered(family: str, variant: str, row_index: int) -> tuple[list[tuple[str, str]], int]:
    rows = read_jsonl(FIXTURES / f"{FAMILIES[family].dataset}.jsonl")
    doc = format_row(family, rows[row_index], row_index)
    fmt, shots = variant.split("_")
    pairs = doc.mc_pairs() if fmt == "mc" else doc.rc_pairs(int(shots[0]))
    prefix = fewshot_prefix(family, fmt) if shots == "5shot" else ""
    return [(prefix + ctx, cont) for ctx, cont in pairs], doc.mc_gold if fmt == "mc" else doc.gold


@pytest.mark.parametrize("family,variant", CASES)
def test_requests_match_oe_eval(family, variant):
    cases = [e for e in EXPECTED if (e["task"], e["variant"]) == (family, variant)]
    assert cases
    for case in cases:
        pairs, gold = rendered(family, variant, case["row"])
        context, continuation = pairs[case["idx"]]
        assert continuation == case["continuation"]
        assert gold == case["label"]
        if family == "boolq":  # oe-eval's BoolQ passages start "Title -- "; the plain dataset has no titles
            assert context[-300:] == case["context"][-300:]
            assert case["context_chars"] > len(context)
        else:
            assert context.endswith(case["context"]) and len(context) == case["context_chars"]


def test_winogrande_scores_the_shared_suffix_after_each_option():
    rows = read_jsonl(FIXTURES / "winogrande.jsonl")
    doc = format_row("winogrande", rows[0], 0)
    pairs = doc.rc_pairs()
    assert [ctx.endswith(opt) for (ctx, _), opt in zip(pairs, [rows[0]["option1"], rows[0]["option2"]])] == [1, 1]
    assert pairs[0][1] == pairs[1][1] and "_" not in pairs[0][0] + pairs[0][1]


def test_bpb_task_scores_only_the_gold_rc_continuation():
    rows = read_jsonl(FIXTURES / "arc_easy.jsonl")
    doc = format_row("arc_easy", rows[0], 0)
    request = get_task("arc_easy_bpb_5shot").request(doc)
    assert request.pairs == [get_task("arc_easy_rc_5shot").request(doc).pairs[doc.gold]] and request.gold == 0


def test_sciq_mc_gold_letter_follows_the_shuffled_options():
    rows = read_jsonl(FIXTURES / "sciq.jsonl")
    for i, row in enumerate(rows):
        doc = format_row("sciq", row, i)
        line = doc.mc_query.split("\n")[1 + doc.mc_gold]
        assert line == f" {'ABCD'[doc.mc_gold]}. {row['correct_answer']}"
    assert {format_row("sciq", row, i).mc_gold for i, row in enumerate(rows)} != {3}


def test_a_row_missing_fields_is_named():
    with pytest.raises(ValueError, match="piqa row 7 lacks the fields"):
        format_row("piqa", {"goal": "x"}, 7)


def test_mmlu_parts_keep_their_subjects_and_take_five_shots_from_the_subjects_dev_split():
    dev = read_jsonl(FIXTURES / "mmlu_dev.jsonl")
    rows = load_rows(FAMILIES["mmlu_humanities"], FIXTURES).rows
    assert {row["subject"] for row in rows} == {"philosophy"} and len(rows) == 2
    everything = load_rows(FAMILIES["mmlu"], FIXTURES).rows
    assert [row["subject"] for row in everything] == sorted(row["subject"] for row in everything)
    assert len(everything) == len(read_jsonl(FIXTURES / "mmlu.jsonl"))

    doc = format_row("mmlu_humanities", rows[0], 0)
    [rc_context] = {ctx for ctx, _ in get_task("mmlu_humanities_rc_5shot").request(doc).pairs}
    assert rc_context.startswith("The following are multiple choice questions (with answers) about philosophy:\n\n")
    shots = [d for d in dev if d["subject"] == "philosophy"]
    assert rc_context.count("\n\nQuestion: ") == 6  # five shots, then the question
    for shot in shots:
        assert f"Question: {shot['question'].strip()}\nAnswer: {shot['choices'][shot['answer']]}\n\n" in rc_context
    assert rc_context.endswith(f"Question: {rows[0]['question'].strip()}\nAnswer:")
    assert get_task("mmlu_humanities_rc_0shot").request(doc).pairs[0][0] == rc_context.rsplit("\n\n", 1)[1]

    mc = get_task("mmlu_humanities_mc_5shot").request(doc)
    assert [cont for _, cont in mc.pairs] == [" A", " B", " C", " D"] and mc.gold == rows[0]["answer"]
    assert mc.pairs[0][0].endswith("\nD. " + rows[0]["choices"][3] + "\nAnswer:")
    assert f"\nAnswer: {'ABCD'[shots[0]['answer']]}\n\n" in mc.pairs[0][0]


def test_hellaswag_mc_options_are_stripped_while_rc_endings_keep_the_space_a_tag_leaves():
    """oe-eval renders an ending that began with "[step]" as " Follow ..." in RC but "D. Follow ..." in MC (seen
    in all 4,000 of its HellaSwag mc_5shot requests; scripts/compare_with_oe_eval.py)."""
    row = {"ind": 7, "activity_label": "Health", "ctx_a": "Eat well.", "ctx_b": "eat slowly.", "label": 3,
           "endings": ["a.", "b.", "c.", "[step] Follow the plan."]}
    doc = format_row("hellaswag", row, 0)
    assert doc.rc_pairs()[3][1] == "  Follow the plan."
    assert "\n D. Follow the plan.\nAnswer:" in doc.mc_query
