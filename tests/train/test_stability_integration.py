"""The stability monitor, skip-step and rollback inside real (tiny) training runs."""

import json

import pytest
import torch
from safetensors.torch import load_file

from kiln.errors import KilnError
from kiln.model import Transformer
from kiln.train.callbacks import Checkpointer
from kiln.train.run import train
from kiln.train.trainer import Trainer

from .conftest import tiny_config, train_until_crash


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_skip_step_leaves_weights_untouched_on_spikes_and_updates_otherwise(tiny_dataset, tmp_path):
    """With k = -1e9 every step after the 2-value window is a spike: the weights stop changing after step 2."""
    run_dir = tmp_path / "run"
    train(tiny_config(tiny_dataset, run_dir, checkpoint={"every": 1, "keep_last": 10},
                      stability={"window": 2, "k": -1e9, "skip_spikes": True, "layer_stats_every": 0}))
    lines = _metrics(run_dir)
    assert [m["skipped"] for m in lines] == [False, False, True, True, True, True]
    assert lines[-1]["skipped_total"] == 4
    step1, step2, final = (_weights(run_dir / f"step{s:06d}") for s in (1, 2, 6))
    assert any(not torch.equal(step1[k], step2[k]) for k in step1)  # a normal step changes the weights
    assert all(torch.equal(step2[k], final[k]) for k in step2)  # skipped steps do not
    assert sorted(p.name for p in (run_dir / "spikes").iterdir()) == [f"step{s:06d}.json" for s in range(3, 7)]
    record = json.loads((run_dir / "spikes/step000003.json").read_text())
    assert len(record["instances"]) == 4 and all(r["text"] for r in record["instances"])


def test_rollback_after_a_nan_reloads_the_checkpoint_skips_the_batch_and_lowers_the_lr(
        tiny_dataset, tmp_path, monkeypatch):
    original = Transformer.forward
    calls: list[int] = []

    def nan_on_fifth_call(self, input_ids, **kw):
        logits = original(self, input_ids, **kw)
        calls.append(1)
        return logits * float("nan") if len(calls) == 5 else logits

    monkeypatch.setattr(Transformer, "forward", nan_on_fifth_call)
    run_dir = tmp_path / "run"
    cfg = tiny_config(tiny_dataset, run_dir, checkpoint={"every": 2, "keep_last": 10}, eval={"every": 0},
                      stability={"rollback": True, "rollback_lr_factor": 0.5, "layer_stats_every": 0})
    train(cfg)
    (record,) = [json.loads(x) for x in (run_dir / "rollbacks.jsonl").read_text().splitlines()]
    assert record["at_step"] == 4 and record["restored"] == "step000004" and "nan" in record["reason"]
    assert record["lr_scale"] == 0.5
    lines = _metrics(run_dir)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5, 6]
    state = json.loads((run_dir / "step000006/train_state.json").read_text())
    assert state["lr_scale"] == 0.5
    # The offending batch was skipped: the loader read 7 steps' worth of instances for 6 steps.
    assert state["loader"]["position"] == 7 * 4
    unscaled = tiny_config(tiny_dataset, tmp_path / "plain", eval={"every": 0}, stability={"layer_stats_every": 0})
    monkeypatch.setattr(Transformer, "forward", original)
    train(unscaled)
    assert lines[4]["lr"] == 0.5 * _metrics(tmp_path / "plain")[4]["lr"]


def test_nan_without_rollback_still_stops(tiny_dataset, tmp_path, monkeypatch):
    original = Transformer.forward
    monkeypatch.setattr(Transformer, "forward", lambda self, x, **kw: original(self, x, **kw) * float("nan"))
    try:
        train(tiny_config(tiny_dataset, tmp_path / "run", eval={"every": 0}))
    except Exception as err:  # noqa: BLE001 - the type is asserted below
        assert type(err).__name__ == "NonFiniteLoss" and "at step 1" in str(err)
    else:
        raise AssertionError("a NaN loss must stop the run")


def test_monitor_state_survives_resume(tiny_dataset, tmp_path, monkeypatch):
    """Spike scores and growth continue across a resume exactly as in an uninterrupted run."""
    stability = {"window": 2, "k": -1.5, "layer_stats_every": 2}  # a low bar, so some steps are spikes
    train(tiny_config(tiny_dataset, tmp_path / "whole", stability=stability))
    train_until_crash(tiny_config(tiny_dataset, tmp_path / "split", stability=stability), 5, monkeypatch)
    train(tiny_config(tiny_dataset, tmp_path / "split", stability=stability))
    volatile = {"step_time", "tokens_per_s", "mfu"}
    whole, split = _metrics(tmp_path / "whole"), _metrics(tmp_path / "split")
    assert [m["step"] for m in split] == list(range(1, 7))
    for a, b in zip(whole[3:], split[3:]):
        assert {k: v for k, v in a.items() if k not in volatile} == {k: v for k, v in b.items() if k not in volatile}
    assert any(m["loss_spike"] or m["grad_norm_spike"] for m in whole)
    assert "layer/1/attn_logit_max" in whole[1] and "layer/0/update_ratio" in whole[3]


def _streak_config(dataset, run_dir, max_rollbacks: int = 2):
    """Every step from 3 on is a spike (k = -1e9), so the second spike in a row asks for a rollback."""
    return tiny_config(dataset, run_dir, checkpoint={"every": 1, "keep_last": 10}, eval={"every": 0},
                       stability={"window": 2, "k": -1e9, "rollback": True, "rollback_after": 2,
                                  "max_rollbacks": max_rollbacks, "layer_stats_every": 0, "forensics": False})


def _train_state(folder):
    return json.loads((folder / "train_state.json").read_text())


def _records(run_dir):
    return [json.loads(x) for x in (run_dir / "rollbacks.jsonl").read_text().splitlines()]


def test_rollback_after_a_spike_streak_restores_a_checkpoint_from_before_it(tiny_dataset, tmp_path):
    """After steps 3 and 4 spike the run goes back to step 2, not to the checkpoints of steps 3 and 4 that
    already hold spiking updates; those are moved aside with their metrics lines; after max_rollbacks it stops."""
    run_dir = tmp_path / "run"
    with pytest.raises(KilnError, match="after 2 rollbacks"):
        train(_streak_config(tiny_dataset, run_dir))
    records = _records(run_dir)
    assert [(r["at_step"], r["restored"], r["rollbacks"]) for r in records] == [(4, "step000002", 1),
                                                                                 (4, "step000002", 2)]
    assert [r["lr_scale"] for r in records] == [0.5, 0.25]
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3, 4]  # the replayed steps' lines, once each
    for n in (1, 2):
        discarded = run_dir / f"discarded/rollback{n}-at-step000004"
        assert sorted(p.name for p in discarded.iterdir()) == ["metrics.jsonl", "step000003", "step000004"]
        assert [m["step"] for m in _metrics(discarded)] == [3, 4]
        assert _train_state(discarded / "step000004")["rollbacks"] == n - 1
    kept = sorted(p.name for p in run_dir.glob("step*"))
    assert kept == ["step000001", "step000002", "step000003", "step000004"]
    assert (_train_state(run_dir / "step000004")["rollbacks"], _train_state(run_dir / "step000004")["lr_scale"]) == \
        (2, 0.25)


def test_rollback_count_and_lr_cut_survive_a_restart(tiny_dataset, tmp_path, monkeypatch):
    """Killed after one rollback, before any later checkpoint: the restart resumes from the restored step with the
    halved learning rate and the count of 1, so only one more rollback is allowed under max_rollbacks=2."""
    run_dir = tmp_path / "run"
    original = Trainer.train_step

    def crash_after_first_rollback(self, micro_batches):
        if self.state.rollbacks == 1:
            raise RuntimeError("simulated crash")
        return original(self, micro_batches)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", crash_after_first_rollback)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(_streak_config(tiny_dataset, run_dir))
    assert sorted(p.name for p in run_dir.glob("step*")) == ["step000001", "step000002"]
    with pytest.raises(KilnError, match="after 2 rollbacks"):
        train(_streak_config(tiny_dataset, run_dir))
    assert [(r["rollbacks"], r["lr_scale"]) for r in _records(run_dir)] == [(1, 0.5), (2, 0.25)]
    assert [m["step"] for m in _metrics(run_dir)] == [1, 2, 3, 4]
    first_timeline = _metrics(run_dir / "discarded/rollback1-at-step000004")
    assert _metrics(run_dir)[2]["lr"] == pytest.approx(first_timeline[0]["lr"] * 0.25)  # step 3, after two cuts


def test_a_kill_inside_a_rollback_is_finished_on_restart(tiny_dataset, tmp_path, monkeypatch, capsys):
    """Killed after the rollback was logged but before its checkpoints were moved: the restart moves them aside
    and resumes from the restored step, not from the discarded step 4."""
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Checkpointer, "on_rollback", lambda *args: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError, match="killed"):
            train(_streak_config(tiny_dataset, run_dir))
    assert (run_dir / "step000004").exists() and len(_records(run_dir)) == 1
    capsys.readouterr()
    with pytest.raises(KilnError, match="after 2 rollbacks"):
        train(_streak_config(tiny_dataset, run_dir))
    assert "(resuming " + str(run_dir / "step000002") + ")" in capsys.readouterr().out
    discarded = run_dir / "discarded/rollback1-at-step000004"
    assert {"step000003", "step000004"} <= {p.name for p in discarded.iterdir()}
    assert [(r["restored"], r["rollbacks"]) for r in _records(run_dir)] == [("step000002", 1), ("step000002", 2)]
