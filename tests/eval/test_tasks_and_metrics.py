"""Task names, primary metrics and chance levels; OLMES's metrics on hand-made scores."""

from __future__ import annotations

import math

import pytest

from kiln.errors import KilnError
from kiln.eval.metrics import chance_accuracy, chance_bpb, example_metrics, task_means
from kiln.eval.tasks import all_task_names, get_task, parse_tasks


def test_names_follow_olmo_convention_and_copa_has_no_five_shot():
    names = all_task_names()
    assert "hellaswag_rc_5shot" in names and "arc_challenge_mc_0shot" in names and "piqa_bpb_5shot" in names
    assert "copa_rc_0shot" in names and "copa_rc_5shot" not in names
    assert len(names) == len(set(names)) == 10 * 6 + 3 + 5 * 6  # OLMES tasks, COPA 0-shot, MMLU and its 4 parts


def test_unknown_task_lists_close_matches():
    with pytest.raises(KilnError, match="did you mean hellaswag_rc_5shot"):
        get_task("helaswag_rc_5shot")
    with pytest.raises(KilnError, match="kiln eval --list"):
        get_task("zzz")


def test_parse_tasks_drops_duplicates_and_refuses_empty():
    assert [t.name for t in parse_tasks("piqa_rc_0shot, piqa_rc_0shot,sciq_mc_5shot")] == ["piqa_rc_0shot",
                                                                                          "sciq_mc_5shot"]
    with pytest.raises(KilnError, match="no tasks"):
        parse_tasks(" , ")


def test_primary_metrics_are_olmes_choices():
    # OLMES (arXiv:2406.08446) table 3: PMI for ARC-C, CSQA, OBQA; per-char for ARC-E, HellaSwag, PIQA, SIQA; none
    # for BoolQ, Winogrande. MC is always raw accuracy; bpb tasks report bpb.
    expected = {"arc_challenge": "acc_uncond", "csqa": "acc_uncond", "openbookqa": "acc_uncond",
                "arc_easy": "acc_per_char", "hellaswag": "acc_per_char", "piqa": "acc_per_char",
                "socialiqa": "acc_per_char", "boolq": "acc_raw", "winogrande": "acc_raw"}
    for family, metric in expected.items():
        assert get_task(f"{family}_rc_5shot").primary_metric == metric
        assert get_task(f"{family}_mc_5shot").primary_metric == "acc_raw"
        assert get_task(f"{family}_bpb_0shot").primary_metric == "bpb"


def test_each_normalisation_can_pick_a_different_choice():
    conts = [" a", " much longer answer"]
    logprobs, tokens, uncond = [-3.0, -6.0], [1, 4], [-1.0, -9.0]
    m = example_metrics(conts, logprobs, tokens, gold=1, uncond_logprobs=uncond)
    assert m["acc_raw"] == 0.0  # -3 > -6
    assert m["acc_per_token"] == 1.0  # -3/1 < -6/4
    assert m["acc_per_char"] == 1.0  # -3/2 < -6/19
    assert m["acc_uncond"] == 1.0  # -3+1 < -6+9
    assert m["bpb"] == pytest.approx(6.0 / math.log(2) / len(" much longer answer"))


def test_ties_go_to_the_first_choice_like_torch_argmax():
    assert example_metrics([" x", " y"], [-1.0, -1.0], [1, 1], gold=0, uncond_logprobs=None)["acc_raw"] == 1.0
    assert example_metrics([" x", " y"], [-1.0, -1.0], [1, 1], gold=1, uncond_logprobs=None)["acc_raw"] == 0.0


def test_means_chance_and_uniform_bpb():
    assert task_means([{"acc_raw": 1.0, "bpb": 2.0}, {"acc_raw": 0.0, "bpb": 4.0}]) == {"acc_raw": 0.5, "bpb": 3.0}
    assert chance_accuracy([4, 4, 2]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    assert chance_bpb([2], ["abcd"], vocab_size=256) == pytest.approx(2 * 8 / 4)
