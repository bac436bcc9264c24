import math

import pytest

from kiln.optim.schedule import ScheduleConfig, lr_multiplier


def test_warmup_is_linear_to_the_peak():
    cfg = ScheduleConfig(name="cosine", warmup=10)
    assert [lr_multiplier(cfg, p, 100) for p in range(1, 11)] == pytest.approx([p / 10 for p in range(1, 11)])


def test_cosine_reaches_the_floor_at_the_end_and_is_half_way_in_the_middle():
    cfg = ScheduleConfig(name="cosine", warmup=10, min_lr_ratio=0.1)
    assert lr_multiplier(cfg, 10, 110) == pytest.approx(1.0)
    assert lr_multiplier(cfg, 60, 110) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(cfg, 110, 110) == pytest.approx(0.1)
    assert lr_multiplier(cfg, 500, 110) == pytest.approx(0.1)
    values = [lr_multiplier(cfg, p, 110) for p in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_decay():
    cfg = ScheduleConfig(name="linear", warmup=0, min_lr_ratio=0.0)
    assert lr_multiplier(cfg, 25, 100) == pytest.approx(0.75)


def test_wsd_is_flat_then_decays_over_the_last_fraction():
    cfg = ScheduleConfig(name="wsd", warmup=5, decay_fraction=0.2, min_lr_ratio=0.0)
    assert [lr_multiplier(cfg, p, 100) for p in (5, 50, 80)] == pytest.approx([1.0, 1.0, 1.0])
    assert lr_multiplier(cfg, 90, 100) == pytest.approx(0.5)
    assert lr_multiplier(cfg, 100, 100) == pytest.approx(0.0)


def test_constant():
    cfg = ScheduleConfig(name="constant", warmup=0)
    assert {lr_multiplier(cfg, p, 10) for p in range(20)} == {1.0}


def test_token_units_use_the_same_shape():
    steps = ScheduleConfig(name="cosine", warmup=10, units="steps")
    tokens = ScheduleConfig(name="cosine", warmup=10 * 4096, units="tokens")
    for step in (1, 5, 10, 55, 100):
        assert lr_multiplier(tokens, step * 4096, 100 * 4096) == pytest.approx(
            lr_multiplier(steps, step, 100), abs=1e-3)
    assert not math.isnan(lr_multiplier(steps, 0, 0))
