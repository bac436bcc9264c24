"""The error breakdown behind `kiln vlm eval`: where wrong points land, and the object head read on its own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln.model.config import ModelConfig
from kiln.model.presets import PRESETS
from kiln.vlm.diagnose import (
    count_errors,
    label_errors,
    landings,
    missed_targets,
    object_head_accuracy,
    point_errors,
    question_reading,
)
from kiln.vlm.model import N_COLOURS, VLM, VisionConfig, VLMConfig
from kiln.vlm.synth import encode_rle


def _record(target: dict, objects: list[dict], targets: list[int]) -> dict:
    """A 20 x 20 image whose objects are 2 x 2 boxes around their points (percent = pixel x 5)."""
    masks = []
    for i in targets:
        mask = np.zeros((20, 20), dtype=bool)
        col, row = int(objects[i]["point"][0] / 5), int(objects[i]["point"][1] / 5)
        mask[row - 1:row + 1, col - 1:col + 1] = True
        masks.append(encode_rle(mask))
    return {"image_size": [20, 20], "target": target, "objects": objects, "masks": masks,
            "points": [objects[i]["point"] for i in targets]}


OBJECTS = [{"colour": "red", "shape": "star", "point": [25.0, 25.0]},      # the target
           {"colour": "red", "shape": "circle", "point": [75.0, 25.0]},    # right colour, wrong shape
           {"colour": "blue", "shape": "star", "point": [25.0, 75.0]},     # wrong colour, right shape
           {"colour": "green", "shape": "square", "point": [75.0, 75.0]}]  # neither


def test_each_wrong_point_is_named_by_the_object_nearest_it():
    record = _record({"colour": "red", "shape": "star"}, OBJECTS, [0])
    pred = [(24.0, 24.0),   # pixel (4.8, 4.8): inside the target's box (pixels 4-5): a hit
            (74.0, 26.0),   # by the red circle
            (26.0, 76.0),   # by the blue star
            (76.0, 74.0),   # by the green square
            (50.0, 50.0)]   # 35 percent from every object's point
    assert landings(record, pred) == ["hit", "wrong_shape", "wrong_colour", "wrong_object", "background"]


def test_a_second_point_on_the_target_is_beside_it_not_a_hit():
    record = _record({"colour": "red", "shape": "star"}, OBJECTS, [0])
    # Two points near the star: the Hungarian match takes the nearer one, the other is an extra point by the target.
    assert landings(record, [(24.0, 24.0), (30.0, 30.0)]) == ["hit", "beside_target"]


def test_a_second_point_inside_a_taken_target_is_a_duplicate():
    record = _record({"colour": "red", "shape": "star"}, OBJECTS, [0])
    # Both points fall in the star's 2 x 2 box (pixels 4-5); the match gives it the first, the other is a duplicate.
    assert landings(record, [(24.0, 24.0), (28.0, 28.0), (74.0, 26.0)]) == ["hit", "duplicate", "wrong_shape"]


def test_a_target_named_by_shape_only_accepts_any_colour():
    record = _record({"colour": None, "shape": "star"}, OBJECTS, [0, 2])
    assert landings(record, [(35.0, 75.0)]) == ["beside_target"]  # the blue star, outside its 2 x 2 box


def test_point_errors_share_out_answers_by_number_and_points_by_landing():
    record = _record({"colour": "red", "shape": "star"}, OBJECTS, [0])
    right = '<point x="24.0" y="24.0" alt="red star">red star</point>'
    too_many = '<points x1="24.0" y1="24.0" x2="74.0" y2="26.0" alt="red star">red star</points>'
    out = point_errors([record] * 4, [right, too_many, "There are none.", "<point x="])
    assert out["answers"] == 4 and out["points"] == 3
    assert out["number"] == {"right": 0.25, "too_many": 0.25, "too_few": 0.25, "malformed": 0.25}
    assert out["landing"] == pytest.approx({"hit": 2 / 3, "duplicate": 0.0, "beside_target": 0.0, "wrong_shape": 1 / 3,
                                            "wrong_colour": 0.0, "wrong_object": 0.0, "background": 0.0})


def test_missed_targets_are_placed_in_the_sorted_list_and_by_whether_they_share_a_column():
    star = {"colour": "red", "shape": "star"}
    row = _record(star, [{**star, "point": [x, 50.0]} for x in (25.0, 50.0, 75.0)], [0, 1, 2])
    column = _record(star, [{**star, "point": [40.0, 25.0]}, {**star, "point": [42.0, 75.0]}], [0, 1])
    single = _record(star, OBJECTS, [0])
    answers = ['<points x1="25.0" y1="50.0" x2="75.0" y2="50.0" alt="red star">red star</points>',  # middle missed
               '<point x="40.0" y="25.0" alt="red star">red star</point>',  # the second of one column missed
               "There are none.", "<point x=", '<point x="24.0" y="24.0" alt="red star">red star</point>']
    out = missed_targets([row, column, row, row, single], answers)
    # 3 + 2 targets from the first two answers, 3 more from "none" (all missed); the malformed and the single skipped
    assert out["targets"] == 8 and out["missed"] == pytest.approx(5 / 8)
    assert out["missed_by_place"] == pytest.approx({"first": 1 / 3, "middle": 2 / 2, "last": 2 / 3})
    assert out["column"] == pytest.approx({"missed": 1 / 5, "found": 1 / 3})


def test_the_object_head_is_scored_at_the_patches_that_hold_a_point(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    text = ModelConfig(**{**PRESETS["olmo2-tiny"], "vocab_size": 64, "n_layers": 1, "d_model": 32, "n_heads": 2,
                          "d_ff": 64})
    model = VLM(VLMConfig(VisionConfig(image_size=32, patch=8, d_model=16, n_layers=1, n_heads=2), text)).eval()
    with torch.no_grad():  # a head that always answers "red" (colour class 1) and "circle" (shape class 1)
        model.objects.proj.weight.zero_()
        model.objects.proj.bias.zero_()
        model.objects.proj.bias[1] = model.objects.proj.bias[N_COLOURS + 2] = 5.0
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    objects = [{"colour": "red", "shape": "circle", "point": [10.0, 10.0]},   # both right
               {"colour": "red", "shape": "star", "point": [60.0, 10.0]},     # colour right
               {"colour": "blue", "shape": "star", "point": [10.0, 60.0]}]    # neither
    records = [{"image": "a.png", "objects": objects}] * 3  # one image asked three times is read once
    out = object_head_accuracy(model, tmp_path, records)
    assert out["images"] == 1 and out["patches"] == 3
    assert out["colour"] == pytest.approx(2 / 3) and out["shape"] == pytest.approx(1 / 3)
    assert out["none"] == 0.0 and out["spurious"] == 16 - 3  # it names red everywhere: the 13 empty patches too
    assert "pairs" not in out
    pairs = {("red", "star"), ("blue", "star"), ("red", "circle"), ("green", "square")}  # green square: not drawn
    out = object_head_accuracy(model, tmp_path, records, pairs=pairs)
    assert out["pairs"] == {
        "blue star": {"patches": 1, "shape": 0.0, "taken_for": "circle", "taken_for_share": 1.0},
        "red circle": {"patches": 1, "shape": 1.0, "taken_for": None, "taken_for_share": 0.0},
        "red star": {"patches": 1, "shape": 0.0, "taken_for": "circle", "taken_for_share": 1.0}}
    with torch.no_grad():  # now "no colour" everywhere: every point patch missed, no empty one named
        model.objects.proj.bias[0] = 10.0
    out = object_head_accuracy(model, tmp_path, records)
    assert out["colour"] == 0.0 and out["none"] == 1.0 and out["spurious"] == 0


def test_question_reading_counts_answers_that_ignore_the_question():
    star = {**_record({"colour": "red", "shape": "star"}, OBJECTS, [0]), "image": "a.png", "count": 1}
    circle = {**_record({"colour": "red", "shape": "circle"}, OBJECTS, [1]), "image": "a.png", "count": 1}
    absent = {**_record({"colour": "blue", "shape": "circle"}, OBJECTS, []), "image": "a.png", "count": 0}
    other = {**_record({"colour": "red", "shape": "star"}, OBJECTS, [0]), "image": "b.png", "count": 1}
    on_star = '<point x="25.0" y="25.0" alt="red star">red star</point>'
    on_circle = '<point x="75.0" y="25.0" alt="red circle">red circle</point>'
    # image a: three questions, three pairs with different truths; the star's points given twice (to the star and
    # to the absent blue circle), so one pair of three; image b's lone question pairs with nothing
    out = question_reading([star, circle, absent, other], [on_star, on_circle, on_star, on_star])
    assert out == {"pairs": 3, "same_points": pytest.approx(1 / 3), "absent": 1, "none_said": 0.0}
    out = question_reading([star, circle, absent], [on_star, on_star, "There are none."])
    assert out == {"pairs": 3, "same_points": pytest.approx(1 / 3), "absent": 1, "none_said": 1.0}


def test_label_errors_split_by_never_seen_pair_with_the_commonest_swap():
    def asked(colour: str, shape: str) -> dict:
        return {"target": {"colour": colour, "shape": shape}, "alt": f"{colour} {shape}"}

    def said(alt: str) -> str:
        return f'<point x="25.0" y="25.0" alt="{alt}">{alt}</point>'

    records = [asked("blue", "hexagon")] * 3 + [asked("red", "star")] * 2 + [asked("red", "circle")]
    answers = [said("blue circle"), said("blue circle"), said("blue hexagon"), said("red triangle"),
               "There are none.", said("red circle")]  # "none" has no label: not counted
    out = label_errors(records, answers, {("blue", "hexagon"), ("red", "star")})
    assert out["unseen"] == {"answers": 4, "wrong": pytest.approx(3 / 4)}
    assert out["seen"] == {"answers": 1, "wrong": 0.0}
    assert out["commonest"] == ["blue hexagon", "blue circle", 2]
    assert label_errors(records[-1:], answers[-1:], set())["commonest"] is None


def test_count_errors_split_wrong_counts_by_whether_they_follow_their_own_points():
    three = {"count": 3}
    two_points = '<points x1="10.0" y1="10.0" x2="20.0" y2="20.0" alt="star">star</points>'
    answers = [f"Counting the {two_points} shows a total of 3.",  # right: not an error
               f"Counting the {two_points} shows a total of 2.",  # follows its two points, too low
               f"Counting the {two_points} shows a total of 5.",  # disagrees with them, too high
               "There are none.",                                 # follows its (no) points, too low
               "Counting the <points x1=",                        # malformed, no total: no count
               f"Counting the {two_points} shows",                # points but no stated total: no count
               'Counting the <points x1="1.0" alt="a">a</points> shows a total of 2.']  # broken tag: disagrees, low
    out = count_errors([three] * 7, answers)
    assert out == {"questions": 7, "wrong": 6, "follows_points": pytest.approx(2 / 6),
                   "disagrees": pytest.approx(2 / 6), "no_count": pytest.approx(2 / 6), "too_low": pytest.approx(3 / 6)}
