import numpy as np
import pytest

from kiln.vlm.metrics import aggregate_point_scores, counting_scores, match_points, point_scores
from kiln.vlm.points import format_points, parse_points


def box_mask(height, width, rows, cols):
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def test_match_points_is_optimal_not_greedy():
    # Greedy would pair the closest pair first, pred 1 with true 0 (distance 1), leaving pred 0 -> true 1 (5):
    # total 6. The optimum pairs pred 0 -> true 0 (2) and pred 1 -> true 1 (2): total 4.
    assert sorted(match_points([(0.0, 0.0), (3.0, 0.0)], [(2.0, 0.0), (5.0, 0.0)])) == [(0, 0), (1, 1)]


def test_match_points_pairs_min_of_both_sizes():
    assert match_points([], [(1.0, 1.0)]) == []
    assert match_points([(1.0, 1.0)], []) == []
    assert match_points([(50.0, 50.0), (1.0, 1.0), (90.0, 90.0)], [(2.0, 2.0)]) == [(1, 0)]


def test_hand_computed_two_predictions_three_objects():
    # 10x10 image, three 2x2 objects: A top-left, B top-right, C bottom-left; true points at their centres.
    masks = [box_mask(10, 10, (0, 2), (0, 2)), box_mask(10, 10, (0, 2), (8, 10)), box_mask(10, 10, (8, 10), (0, 2))]
    true = [(10.0, 10.0), (90.0, 10.0), (10.0, 90.0)]  # pixels (1, 1), (9, 1), (1, 9)
    # pred 0 at pixel (1.5, 1.5) is matched to A and inside it: a hit.
    # pred 1 at pixel (7.5, 1.0) is matched to B (nearest) but lies in column 7, left of B's columns 8-9: a miss.
    pred = [(15.0, 15.0), (75.0, 10.0)]
    # hits = 1; precision = 1/2; recall = 1/3; f1 = 2 * (1/2)(1/3) / (1/2 + 1/3) = (1/3) / (5/6) = 2/5.
    scores = point_scores(pred, true, masks)
    assert scores == pytest.approx({"precision": 0.5, "recall": 1 / 3, "f1": 0.4})


def test_point_in_another_objects_mask_is_not_a_hit():
    # A is wide (columns 0-5) with its point far left; the prediction at pixel (5.5, 5) is on A's pixels but
    # nearer B's point (distance 3.5 versus 4.5), so it is matched to B, whose mask it misses.
    masks = [box_mask(10, 10, (0, 10), (0, 6)), box_mask(10, 10, (0, 10), (8, 10))]
    true = [(10.0, 50.0), (90.0, 50.0)]
    assert point_scores([(55.0, 50.0)], true, masks) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_extra_predictions_lower_precision_only():
    masks = [box_mask(10, 10, (4, 6), (4, 6))]
    # One hit among three predictions: precision 1/3, recall 1/1, f1 = 2(1/3)(1) / (4/3) = 1/2.
    scores = point_scores([(50.0, 50.0), (5.0, 5.0), (95.0, 95.0)], [(50.0, 50.0)], masks)
    assert scores == pytest.approx({"precision": 1 / 3, "recall": 1.0, "f1": 0.5})


def test_no_predictions_on_an_image_with_objects_scores_zero():
    masks = [box_mask(10, 10, (4, 6), (4, 6))]
    assert point_scores([], [(50.0, 50.0)], masks) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_empty_image_scores_one_only_when_nothing_is_predicted():
    assert point_scores([], [], []) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert point_scores([(50.0, 50.0)], [], []) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_malformed_output_scores_zero_even_on_an_empty_image():
    masks = [box_mask(10, 10, (4, 6), (4, 6))]
    assert point_scores(None, [(50.0, 50.0)], masks) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert point_scores(None, [], []) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_point_selects_the_pixel_it_falls_in_and_is_clamped():
    only_col_7 = box_mask(10, 10, (0, 10), (7, 8))
    # x = 76% of 10 px = 7.6: inside pixel column 7 (rounding to the nearest index would say 8).
    assert point_scores([(76.0, 50.0)], [(75.0, 50.0)], [only_col_7])["precision"] == 1.0
    last_col = box_mask(10, 10, (0, 10), (9, 10))
    # x = 100% is pixel 10.0, one past the edge: clamped onto column 9.
    assert point_scores([(100.0, 50.0)], [(95.0, 50.0)], [last_col])["precision"] == 1.0


def test_non_square_image_maps_x_to_columns_and_y_to_rows():
    mask = np.zeros((10, 20), dtype=bool)  # (H, W)
    mask[5, 10] = True
    # (52%, 55%) -> pixel x = 10.4 of 20, y = 5.5 of 10 -> row 5, column 10.
    assert point_scores([(52.0, 55.0)], [(52.5, 55.0)], [mask])["recall"] == 1.0
    assert point_scores([(55.0, 52.0)], [(52.5, 55.0)], [mask])["recall"] == 0.0


def test_mask_count_must_match_true_points():
    with pytest.raises(ValueError, match="one mask per true point"):
        point_scores([], [(50.0, 50.0)], [])


def test_scores_from_parsed_text():
    masks = [box_mask(10, 10, (0, 2), (0, 2)), box_mask(10, 10, (8, 10), (8, 10))]
    true = [(10.0, 10.0), (90.0, 90.0)]
    answer = format_points(true, "square")
    assert point_scores(parse_points(answer), true, masks) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    cut_off = answer[:-5]
    assert point_scores(parse_points(cut_off), true, masks)["f1"] == 0.0


def test_aggregate_is_a_macro_average_of_per_image_f1():
    # Image 1: p = 1, r = 1/2, f1 = 2/3. Image 2: p = 1/2, r = 1, f1 = 2/3.
    # Means: p = r = 3/4; f1 is the mean of the per-image f1s, 2/3, not the f1 of the means (3/4).
    per_image = [{"precision": 1.0, "recall": 0.5, "f1": 2 / 3}, {"precision": 0.5, "recall": 1.0, "f1": 2 / 3}]
    assert aggregate_point_scores(per_image) == pytest.approx({"precision": 0.75, "recall": 0.75, "f1": 2 / 3})
    with pytest.raises(ValueError, match="empty"):
        aggregate_point_scores([])


def test_counting_scores_hand_computed():
    pred = [3, 2, None, 0, 5, 1]
    true = [3, 3, 1, 0, 4, 1]
    # exact:      yes, no, no (None), yes, no, yes     -> 3/6
    # within one: yes, yes (|2-3|=1), no, yes, yes (|5-4|=1), yes -> 5/6
    # gave a count: 5 of 6
    # per true count: 0 -> 1/1; 1 -> 1/2 (None wrong, 1 right); 3 -> 1/2; 4 -> 0/1
    scores = counting_scores(pred, true)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["within_one"] == pytest.approx(5 / 6)
    assert scores["valid"] == pytest.approx(5 / 6)
    assert scores["per_count"] == {0: (1.0, 1), 1: (0.5, 2), 3: (0.5, 2), 4: (0.0, 1)}
    assert list(scores["per_count"]) == [0, 1, 3, 4]


def test_counting_scores_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="same non-zero number"):
        counting_scores([1, 2], [1])
    with pytest.raises(ValueError, match="same non-zero number"):
        counting_scores([], [])
