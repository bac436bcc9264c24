"""DDP, FSDP2 and HSDP on 2 gloo processes against one process with the same global batch, and resharding resume.

The runs are in fp32 with global batch 8 = micro-batch x 2 accumulation steps x ranks, so the ranks and the single
process differ only in summation order: losses, gradient norms and validation loss agree within 1e-5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader

from kiln.train.config import load_config
from kiln.train.run import train

from ..eval.conftest import FIXTURES
from ..train.conftest import tiny_config
from .launch import run_ranks

STEPS = 6
# an odd number of examples, so one rank has more batches than the other and must wait in step with it
DOWNSTREAM = {"downstream": ["arc_easy_rc_0shot", "piqa_mc_5shot"], "downstream_limit": 5,
              "downstream_batch_size": 2, "downstream_data": str(FIXTURES)}
TRAIN = "tests.distributed.workers:train_config"


def _config(dataset: Path, run_dir: Path, micro: int, async_save: bool = False, **distributed) -> dict:
    """Evaluation (validation and downstream tasks), checkpoints and per-layer statistics every 3 steps, so each
    periodic path runs twice."""
    return tiny_config(dataset, run_dir, trainer={"micro_batch_size": micro, "grad_accum": 2, "steps": STEPS},
                       checkpoint={"every": 3, "async_save": async_save}, stability={"layer_stats_every": 3},
                       eval=DOWNSTREAM, distributed=distributed).to_dict()


def _layer_stats(line: dict) -> dict[str, float]:
    return {k: v for k, v in line.items() if k.startswith("layer/") or k == "output_logit_max"}


def _downstream(line: dict) -> dict[str, float]:
    return {k: v for k, v in line.items() if k.startswith("downstream/")}


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_training(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == list(range(1, STEPS + 1))  # one line per step
    for x, y in zip(ma, mb, strict=True):
        assert x["tokens"] == y["tokens"]
        # the last validation pass reads the whole (small) held-out split, each rank its share
        assert ("val_full_bpb" in x) == ("val_full_bpb" in y) == (x["step"] == STEPS)
        for key in ("loss", "z_loss", "grad_norm", "val_loss", "val_full_loss", "val_full_bpb", "val_full_tokens"):
            assert (key in x) == (key in y)
            if key in x:
                assert abs(x[key] - y[key]) < 1e-5, (x["step"], key, x[key], y[key])
        # downstream metrics over all ranks' shares: every example scored once, as the one process scores it
        down_x, down_y = _downstream(x), _downstream(y)
        assert down_x.keys() == down_y.keys() and (len(down_x) > 0) == (x["step"] % 3 == 0), x["step"]
        for key, value in down_x.items():
            assert down_y[key] == pytest.approx(value, abs=1e-4), (x["step"], key, value, down_y[key])
        # per-layer statistics of the whole global batch and model, not of one rank's shard or micro-batch
        stats_x, stats_y = _layer_stats(x), _layer_stats(y)
        assert stats_x.keys() == stats_y.keys() and (len(stats_x) > 0) == (x["step"] % 3 == 0), x["step"]
        for key, value in stats_x.items():
            assert stats_y[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (x["step"], key, value, stats_y[key])
    final = f"step{STEPS:06d}/model.safetensors"
    wa, wb = load_file(str(a / final)), load_file(str(b / final))
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5)


def _resume_copy(src: Path, dst: Path) -> None:
    """The run as if it had stopped after step 3: the last checkpoint removed, metrics kept (resume trims them)."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / f"step{STEPS:06d}")


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory) -> dict[str, Path]:
    """One uninterrupted run each: one process, DDP and FSDP (saving asynchronously) on two."""
    root = tmp_path_factory.mktemp("dp")
    train(load_config(None, _config(tiny_dataset, root / "single", micro=4)))
    run_ranks(TRAIN, {"config": _config(tiny_dataset, root / "ddp", micro=2, strategy="ddp")})
    run_ranks(TRAIN, {"config": _config(tiny_dataset, root / "fsdp", micro=2, strategy="fsdp",
                                        async_save=True)})
    return {name: root / name for name in ("single", "ddp", "fsdp")}


def test_ddp_matches_single_process(runs):
    _assert_same_training(runs["single"], runs["ddp"])


def test_fsdp_matches_single_process(runs):
    _assert_same_training(runs["single"], runs["fsdp"])


def test_hsdp_matches_single_process(runs, tiny_dataset, tmp_path):
    """Two replicas of one shard each: the replicate dimension of the (replicate, shard) mesh carries the reduce."""
    run_ranks(TRAIN, {"config": _config(tiny_dataset, tmp_path / "hsdp", micro=2, strategy="hsdp", shard_size=1)})
    _assert_same_training(runs["single"], tmp_path / "hsdp")


def test_checkpoints_name_tensors_alike_under_every_strategy(runs):
    keys = {name: set(FileSystemReader(str(run / "step000003/dcp")).read_metadata().state_dict_metadata)
            for name, run in runs.items()}
    assert keys["single"] == keys["ddp"] == keys["fsdp"]
    assert "model.blocks.0.attn.qkv.weight" in keys["single"]
    for run in runs.values():  # written by rank 0 alone, complete
        assert sorted(p.name for p in run.iterdir() if p.name.startswith((".tmp", "step"))) == \
            ["step000003", "step000006"]


def test_fsdp_checkpoint_of_two_ranks_resumes_on_one(runs, tiny_dataset, tmp_path):
    _resume_copy(runs["fsdp"], tmp_path / "resumed")
    run = train(load_config(None, _config(tiny_dataset, tmp_path / "resumed", micro=4)))
    assert run.resumed_from.name == "step000003"
    _assert_same_training(runs["fsdp"], tmp_path / "resumed")


def test_checkpoint_of_one_process_resumes_on_two_fsdp_ranks(runs, tiny_dataset, tmp_path):
    _resume_copy(runs["single"], tmp_path / "resumed")
    results, _ = run_ranks(TRAIN, {"config": _config(tiny_dataset, tmp_path / "resumed", micro=2, strategy="fsdp")})
    assert "resuming" in results[0].output and "step000003" in results[0].output
    _assert_same_training(runs["single"], tmp_path / "resumed")


def test_fsdp_in_bf16_with_activation_checkpointing_tracks_fp32(runs, tiny_dataset, tmp_path):
    """bf16 compute with fp32 reduction and master weights; samples at the end run on the sharded bf16 model."""
    config = _config(tiny_dataset, tmp_path / "bf16", micro=2, strategy="fsdp")
    config["trainer"].update(precision="bf16", activation_checkpointing=True, ac_every=2)  # block 0 of 2
    run_ranks(TRAIN, {"config": config})
    bf16, fp32 = _metrics(tmp_path / "bf16"), _metrics(runs["single"])
    assert abs(bf16[0]["loss"] - fp32[0]["loss"]) < 0.05
    assert load_file(str(tmp_path / "bf16/step000006/model.safetensors"))["embed.weight"].dtype == torch.float32
    assert (tmp_path / "bf16/samples.txt").read_text().startswith("The king")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_rollback_on_two_ranks_moves_the_discarded_timeline_aside(tiny_dataset, tmp_path, strategy):
    """Every step from 3 on spikes (k = -1e9): both ranks roll back to step 2 twice, with FSDP's asynchronous saves
    in flight, set steps 3 and 4 aside each time, and stop together at max_rollbacks with exit code 2."""
    run_dir = tmp_path / strategy
    config = _config(tiny_dataset, run_dir, micro=2, async_save=strategy == "fsdp", strategy=strategy)
    config["checkpoint"].update(every=1, keep_last=10)
    config["stability"].update(window=2, k=-1e9, rollback=True, rollback_after=2, max_rollbacks=2, forensics=False)
    results, _ = run_ranks(TRAIN, {"config": config}, check=False)
    assert [r.returncode for r in results] == [2, 2], [r.output[-2000:] for r in results]
    assert "after 2 rollbacks" in results[0].output + results[1].output
    records = [json.loads(x) for x in (run_dir / "rollbacks.jsonl").read_text().splitlines()]
    assert [(r["restored"], r["rollbacks"], r["lr_scale"]) for r in records] == [("step000002", 1, 0.5),
                                                                                  ("step000002", 2, 0.25)]
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3, 4]
    for n in (1, 2):
        moved = {p.name for p in (run_dir / f"discarded/rollback{n}-at-step000004").iterdir()}
        assert moved == {"metrics.jsonl", "step000003", "step000004"}
    kept = {p.name for p in run_dir.glob("step*")}  # the last async save may still be in flight at the stop
    assert {f"step{s:06d}" for s in range(1, 4)} <= kept <= {f"step{s:06d}" for s in range(1, 5)}


def test_mup_under_fsdp_matches_one_process_and_resumes(tiny_dataset, tmp_path):
    """muP away from its base width (m = 2): its extra optimizer group (LR / m) shards, saves and resumes like any."""
    configs = {}
    for name, micro, strategy in (("single", 4, {}), ("fsdp", 2, {"strategy": "fsdp"})):
        configs[name] = _config(tiny_dataset, tmp_path / name, micro=micro, **strategy)
        configs[name]["model"].update(d_model=64, d_ff=128, parametrization="mup", mup_base_d_model=32)
    train(load_config(None, configs["single"]))
    run_ranks(TRAIN, {"config": configs["fsdp"]})
    _assert_same_training(tmp_path / "single", tmp_path / "fsdp")
    _resume_copy(tmp_path / "fsdp", tmp_path / "resumed")
    resumed = {**configs["single"], "trainer": {**configs["single"]["trainer"], "run_dir": str(tmp_path / "resumed")}}
    assert train(load_config(None, resumed)).resumed_from.name == "step000003"
    _assert_same_training(tmp_path / "single", tmp_path / "resumed")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_chunked_loss_on_two_ranks_matches_whole_logits_on_one(runs, tiny_dataset, tmp_path, strategy):
    """The loss a few rows at a time, where FSDP has gathered the output weight inside forward, trains as the one
    process computing whole logits does, through evaluation and checkpoints."""
    config = _config(tiny_dataset, tmp_path / strategy, micro=2, strategy=strategy)
    config["trainer"]["loss_chunk"] = 5  # rows: several blocks per micro-batch, the last one short
    run_ranks(TRAIN, {"config": config})
    _assert_same_training(runs["single"], tmp_path / strategy)


def test_a_data_afresh_fork_on_two_fsdp_ranks_trains_as_on_one(runs, tiny_dataset, tmp_path):
    """checkpoint.init_data_position=false under FSDP: every rank starts its slice of the data from the beginning,
    so two ranks train the fork exactly as one process does, checkpoints and evaluations at step 6 included."""
    fork = {"init_from": str(runs["single"] / "step000003"), "init_data_position": False}
    configs = {name: _config(tiny_dataset, tmp_path / name, micro=micro, **distributed)
               for name, micro, distributed in (("one", 4, {}), ("two", 2, {"strategy": "fsdp"}))}
    for config in configs.values():
        config["checkpoint"].update(fork)
    train(load_config(None, configs["one"]))
    run_ranks(TRAIN, {"config": configs["two"]})
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two] == [4, 5, 6]
    for x, y in zip(one, two, strict=True):
        for key in ("loss", "grad_norm"):
            assert abs(x[key] - y[key]) < 1e-5, (x["step"], key)
    assert two[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], abs=1e-5)
    resumed = [m["loss"] for m in _metrics(runs["single"]) if m["step"] > 3]
    assert resumed != [m["loss"] for m in one]  # the data did start afresh, not where the source run stopped
