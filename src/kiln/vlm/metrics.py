"""Pointing and counting metrics, defined as Molmo's evaluators define them.

Source: allenai/molmo `olmo/eval/evaluators.py` (`PointingEval`, `compute_precision`, `compute_recall`, `f1_score`,
`is_point_in_region`, `PointCountEval`). Pointing: predicted and true points are matched one-to-one by the
Hungarian algorithm on Euclidean pixel distance; a matched pair is a hit only when the predicted point lies inside
the matched object's mask; precision = hits / predicted, recall = hits / true. An image with no true points scores
1 only if nothing is predicted. Counting: exact and within-one accuracy, and exact accuracy per true count, of the
count read from the answer's words as PointCountEval reads them (`kiln.vlm.points.parse_count`).

Where this differs from Molmo, on purpose:
- Malformed output (`parse_points` -> None) scores 0 on every image; Molmo only checks the format when the image
  has true points.
- A point selects the pixel it falls in (floor, clamped to the image), because our points are pixel centres
  (col + 0.5); Molmo rounds to the nearest index and counts a point off the image as a miss.
- F1 is exact (0 when precision + recall is 0); Molmo adds 1e-10 to the denominator.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment

Point = tuple[float, float]


def match_points(pred: list[Point], true: list[Point]) -> list[tuple[int, int]]:
    """One-to-one (pred_index, true_index) pairs minimising total Euclidean distance; min(len) pairs in all."""
    if not pred or not true:
        return []
    pred_array, true_array = np.asarray(pred, dtype=float), np.asarray(true, dtype=float)
    distances = np.linalg.norm(pred_array[:, None, :] - true_array[None, :, :], axis=-1)  # (P, T)
    rows, cols = linear_sum_assignment(distances)
    return [(int(row), int(col)) for row, col in zip(rows, cols)]


def to_pixels(points: list[Point], height: int, width: int) -> list[Point]:
    """Percent (x, y) to continuous pixel (x, y), where pixel (row, col) spans [col, col+1) x [row, row+1)."""
    return [(x / 100.0 * width, y / 100.0 * height) for x, y in points]


def in_mask(point: Point, mask: np.ndarray) -> bool:
    """Whether a pixel-space (x, y) point falls on a True pixel of `mask`, clamping it onto the image first."""
    height, width = mask.shape
    col = min(max(math.floor(point[0]), 0), width - 1)
    row = min(max(math.floor(point[1]), 0), height - 1)
    return bool(mask[row, col])


def point_scores(pred: list[Point] | None, true: list[Point], masks: list[np.ndarray]) -> dict[str, float]:
    """Precision, recall and F1 of one image's predicted points (percent; None when the output was malformed)
    against its true points (percent) and their objects' (H, W) bool masks, in the same order."""
    if len(masks) != len(true):
        raise ValueError(f"got {len(masks)} masks for {len(true)} true points; need one mask per true point")
    if pred is None:
        return _scores(0.0, 0.0)
    if not true:
        return _scores(1.0, 1.0) if not pred else _scores(0.0, 0.0)
    hits = len(hit_points(pred, true, masks))
    return _scores(hits / len(pred) if pred else 0.0, hits / len(true))


def hit_points(pred: list[Point], true: list[Point], masks: list[np.ndarray]) -> set[int]:
    """Indices of the predicted points (percent) that are hits: matched one-to-one to a true point (percent) and
    inside that object's mask."""
    if not pred or not true:
        return set()
    height, width = masks[0].shape
    pred_pixels, true_pixels = to_pixels(pred, height, width), to_pixels(true, height, width)
    return {p for p, t in match_points(pred_pixels, true_pixels) if in_mask(pred_pixels[p], masks[t])}


def _scores(precision: float, recall: float) -> dict[str, float]:
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def aggregate_point_scores(per_image: list[dict]) -> dict[str, float]:
    """Mean precision, recall and F1 over images. Like Molmo's PointingEval this is a macro average: each image
    counts once, whatever its number of points, and F1 is the mean of per-image F1s, not the F1 of the means."""
    if not per_image:
        raise ValueError("per_image is empty; need at least one image's scores to average")
    return {key: float(np.mean([scores[key] for scores in per_image])) for key in ("precision", "recall", "f1")}


def counting_scores(pred_counts: list[int | None], true_counts: list[int]) -> dict:
    """Exact-match accuracy, within-one accuracy, the share of answers that gave a count at all, and exact
    accuracy per true count as {count: (accuracy, n)}. A None prediction (no count could be read) is wrong."""
    if len(pred_counts) != len(true_counts) or not true_counts:
        raise ValueError(f"got {len(pred_counts)} predicted and {len(true_counts)} true counts; "
                         "need the same non-zero number of each")
    exact = [pred is not None and pred == true for pred, true in zip(pred_counts, true_counts)]
    close = [pred is not None and abs(pred - true) <= 1 for pred, true in zip(pred_counts, true_counts)]
    by_count: dict[int, list[bool]] = defaultdict(list)
    for correct, true in zip(exact, true_counts):
        by_count[true].append(correct)
    return {
        "accuracy": float(np.mean(exact)),
        "within_one": float(np.mean(close)),
        "valid": float(np.mean([pred is not None for pred in pred_counts])),
        "per_count": {count: (float(np.mean(by_count[count])), len(by_count[count])) for count in sorted(by_count)},
    }
