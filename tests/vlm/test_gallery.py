"""Markers stay visible: drawn over a white outline, so they show on an object of their own colour."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kiln.vlm.gallery import HALO, PREDICTED, SCALE, TRUE, draw_points


def _around(drawn: np.ndarray, x: float, y: float, reach: int = 14) -> np.ndarray:
    """The pixels within `reach` of the point at (x, y) percent, as rows of RGB."""
    cx, cy = int(x / 100 * drawn.shape[1]), int(y / 100 * drawn.shape[0])
    return drawn[cy - reach:cy + reach + 1, cx - reach:cx + reach + 1].reshape(-1, 3)


def _count(pixels: np.ndarray, colour: tuple[int, int, int]) -> int:
    return int((pixels == colour).all(axis=1).sum())


def test_a_red_cross_on_a_red_shape_and_a_green_ring_on_a_green_one_are_outlined_in_white():
    image = Image.new("RGB", (96, 96), PREDICTED)
    image.paste(TRUE, (48, 0, 96, 96))
    drawn = np.asarray(draw_points(image, predicted=[(25.0, 50.0)], true=[(75.0, 50.0)]))
    assert drawn.shape == (96 * SCALE, 96 * SCALE, 3)
    for x in (25.0, 75.0):
        assert _count(_around(drawn, x, 50.0), HALO) > 20, f"no white outline around the marker at x={x}%"


def test_the_markers_lie_on_top_of_their_outline():
    image = Image.new("RGB", (96, 96), (128, 128, 128))
    drawn = np.asarray(draw_points(image, predicted=[(25.0, 50.0)], true=[(75.0, 50.0)]))
    cross, ring = _around(drawn, 25.0, 50.0), _around(drawn, 75.0, 50.0)
    assert _count(cross, PREDICTED) > 20 and _count(cross, HALO) > 10
    assert _count(ring, TRUE) > 40 and _count(ring, HALO) > 20
    assert _count(cross, TRUE) == 0 and _count(ring, PREDICTED) == 0
