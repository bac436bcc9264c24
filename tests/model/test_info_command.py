"""`kiln info PRESET`: its JSON agrees with the config functions; a bad preset is a clean exit 2."""

from __future__ import annotations

import json

import pytest

from kiln.cli import main
from kiln.model import PRESETS, flops_per_token, param_counts, preset


def test_info_json_reports_the_counted_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "olmo2-1b", "--json", "--seq-len", "2048", "--vocab-size", "100352"]) == 0
    info = json.loads(capsys.readouterr().out)
    cfg = preset("olmo2-1b", vocab_size=100352)
    counts = param_counts(cfg)
    assert info["params_total"] == counts["total"]
    assert info["params_non_embedding"] == counts["non_embedding"]
    assert info["flops_per_token"] == flops_per_token(cfg, 2048)
    assert (info["n_layers"], info["d_model"], info["padded_vocab_size"]) == (16, 2048, 100352)


def test_info_unknown_preset_exits_2_listing_the_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "olmo2-2b"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "olmo2-2b" in captured.err
    assert all(name in captured.err for name in PRESETS)
    assert "Traceback" not in captured.err
