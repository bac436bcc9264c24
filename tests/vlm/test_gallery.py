"""Markers stay visible on an object of their own colour."""

from __future__ import annotations

import numpy as np
from PIL import Image

from kiln.vlm.gallery import HALO, PREDICTED, SCALE, TRUE, draw_points


def test_a_red_cross_on_a_red_shape_and_a_green_ring_on_a_green_one_are_outlined_in_white():
    image = Image.new("RGB", (96, 96), PREDICTED)
    image.paste(TRUE, (48, 0, 96, 96))
    drawn = np.asarray(draw_points(image, predicted=[(25.0, 50.0)], true=[(75.0, 50.0)]))
    assert drawn.shape == (96 * SCALE, 96 * SCALE, 3)
    for x in (25.0, 75.0):
        cx, cy = int(x / 100 * drawn.shape[1]), drawn.shape[0] // 2
        around = drawn[cy - 14:cy + 15, cx - 14:cx + 15].reshape(-1, 3)
        assert (around == HALO).all(axis=1).sum() > 20, f"no white outline around the marker at x={x}%"
    left, right = drawn[:, :drawn.shape[1] // 2], drawn[:, drawn.shape[1] // 2:]
    assert not (right == PREDICTED).all(axis=-1).any(), "a cross drawn where no point was predicted"
    assert not (left == TRUE).all(axis=-1).any(), "a ring drawn where no point is true"
