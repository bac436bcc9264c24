import pytest

from kiln.model.config import ModelConfig, flops_per_token
from kiln.train.bench import bench

from .conftest import tiny_config

# A 1-layer model: width 32, 2 heads of 16, SwiGLU hidden 64, context 32, and the tiny dataset's 320-token
# vocabulary padded to 384 rows. Training FLOPs per token, counted by hand (PaLM, appendix B): 6 per matmul
# weight (2 forward, 4 backward), plus attention's QK^T and AV, 2 FLOPs per multiply-add forward, times 3.
ONE_LAYER = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}
SEQ_LEN, VOCAB = 32, 320
MATMUL_WEIGHTS = (
    32 * (32 + 16 + 16 + 16 + 16)  # qkv: (32 -> q 2x16, k 2x16, v 2x16)
    + 32 * 32  # out: (2x16 -> 32)
    + 32 * (2 * 64)  # MLP up, gate and up fused: (32 -> 2 * 64)
    + 64 * 32  # MLP down: (64 -> 32)
    + 32 * 384  # output head over the padded vocabulary: (32 -> 384)
)
# Per token, per head: q (16) against T keys, and T weights against v (T x 16); 2 FLOPs each multiply-add.
ATTENTION = 3 * 2 * (2 * 2 * 16 * SEQ_LEN)  # 3 (forward + backward) x (QK^T, AV) x 2 FLOPs x 2 heads x 16 x T
HAND_FLOPS_PER_TOKEN = 6 * MATMUL_WEIGHTS + ATTENTION  # 6 * 22,528 + 12,288 = 147,456


def test_flops_per_token_matches_the_hand_count():
    cfg = ModelConfig(vocab_size=VOCAB, **ONE_LAYER)
    assert flops_per_token(cfg, SEQ_LEN) == HAND_FLOPS_PER_TOKEN


def test_bench_times_the_trainer_against_a_bare_loop_and_leaves_no_run_folder(tiny_dataset, tmp_path, capsys):
    cfg = tiny_config(tiny_dataset, tmp_path / "run", model=ONE_LAYER, data={"seq_len": SEQ_LEN},
                      trainer={"peak_flops": 1e15})  # far above any CPU, so MFU is not clamped
    result = bench(cfg, steps=3, warmup=1, compare_bare=True)
    assert result["tokens_per_s"] > 0 and result["bare_tokens_per_s"] > 0
    assert result["ratio"] == pytest.approx(result["tokens_per_s"] / result["bare_tokens_per_s"])
    assert result["mfu"] == pytest.approx(HAND_FLOPS_PER_TOKEN * result["tokens_per_s"] / 1e15)
    out = capsys.readouterr().out
    assert "trainer/bare" in out and "peak memory" in out
    assert "peak FLOP/s for MFU: configured trainer.peak_flops" in out
    assert not (tmp_path / "run").exists()
