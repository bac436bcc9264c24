"""The report's judgement of the accuracy step: a ladder that never beat chance cannot predict accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from kiln.ladder.report import UNCONSTRAINED, fit_ladder, predict, prediction_lines, report_lines
from kiln.ladder.results import Point, TaskResult


def _points(accuracy_of_bpb) -> list[Point]:
    points = []
    for n in (1e4, 2e4, 4e4):
        for d in (2e5, 4e5, 8e5):
            loss = 1.0 + 30 / n**0.3 + 40 / d**0.3
            bpb = 0.5 + 20 / n**0.3 + 30 / d**0.3
            task = TaskResult(bpb=bpb, accuracy=accuracy_of_bpb(bpb), chance=0.25)
            points.append(Point("r", "x", int(n), int(d), 1.0, False, loss, loss / 2, {"t": task}))
    return points


@pytest.mark.parametrize("accuracy_of_bpb, unconstrained", [
    (lambda bpb: 0.25 + 0.01 * np.sin(7 * bpb), True),  # wobbling at chance
    (lambda bpb: 0.25 + 0.6 / (1 + np.exp(8 * (bpb - 1.6))), False),  # a real rise as bpb falls
])
def test_an_accuracy_step_the_ladder_never_saw_rise_is_flagged(accuracy_of_bpb, unconstrained):
    fitted = fit_ladder(_points(accuracy_of_bpb), samples=10)
    assert fitted["tasks"]["t"]["rose_above_chance"] is not unconstrained
    lines = prediction_lines(predict(fitted, 1e5, 2e6))
    assert any(UNCONSTRAINED in line for line in lines) is unconstrained
    report = report_lines([], [], fitted, [], [], 0.9)
    assert (UNCONSTRAINED in report) is unconstrained
