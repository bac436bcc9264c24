import pytest

from kiln.model.config import flops_per_token
from kiln.train.bench import bench

from .conftest import tiny_config


def test_bench_times_the_trainer_against_a_bare_loop_and_leaves_no_run_folder(tiny_dataset, tmp_path, capsys):
    cfg = tiny_config(tiny_dataset, tmp_path / "run")
    result = bench(cfg, steps=3, warmup=1, compare_bare=True)
    assert result["tokens_per_s"] > 0 and result["bare_tokens_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["tokens_per_s"] / result["bare_tokens_per_s"])
    per_token = flops_per_token(cfg.model.build(vocab_size=320), cfg.data.seq_len)  # the tiny dataset's vocabulary
    assert result["mfu"] == pytest.approx(per_token * result["tokens_per_s"] / cfg.trainer.peak_flops)
    out = capsys.readouterr().out
    assert "trainer/bare" in out and "peak memory" in out
    assert not (tmp_path / "run").exists()
