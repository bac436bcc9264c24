"""The stability monitor against a fake trainer: spike flags, skip decisions, forensics, rollback, state."""

import json
from types import SimpleNamespace

import numpy as np
import torch

from kiln.data.loader import Batch
from kiln.model import ModelConfig, Transformer
from kiln.stability.monitor import StabilityConfig, StabilityMonitor


class FakeTrainer:
    def __init__(self, model=None):
        self.model = model
        self.device = torch.device("cpu")
        self.state = SimpleNamespace(step=0)
        self.last_batches = []
        self.rollbacks: list[tuple[str, int | None]] = []

    def request_rollback(self, reason: str, before_step: int | None = None) -> None:
        self.rollbacks.append((reason, before_step))


def _run(monitor, trainer, series):
    """Feed (loss, grad_norm) pairs through the monitor the way the trainer does; return the metrics lines."""
    lines = []
    for loss, grad_norm in series:
        monitor.on_step_start(trainer)
        skip = monitor.before_optimizer_step(trainer, loss, grad_norm)
        trainer.state.step += 1
        metrics = {"step": trainer.state.step, "loss": loss, "grad_norm": grad_norm}
        monitor.on_step_end(trainer, metrics)
        assert metrics["skipped"] == skip
        lines.append(metrics)
    return lines


def _series(n=40, spikes=(), grad_spikes=()):
    return [(5.0 if i in spikes else 2.0 + 0.01 * (i % 3), 9.0 if i in grad_spikes else 1.0 + 0.01 * (i % 2))
            for i in range(n)]


def test_flags_scores_and_skips(tmp_path):
    monitor = StabilityMonitor(StabilityConfig(window=8, k=4, skip_spikes=True, forensics=False,
                                               layer_stats_every=0), tmp_path)
    lines = _run(monitor, FakeTrainer(), _series(spikes=(20,), grad_spikes=(30,)))
    assert [m["step"] for m in lines if m["loss_spike"]] == [21]
    assert [m["step"] for m in lines if m["grad_norm_spike"]] == [31]
    assert [m["step"] for m in lines if m["skipped"]] == [21, 31]
    assert lines[-1]["skipped_total"] == 2
    assert lines[-1]["spike_score_cum"] == 2 / 40


def test_without_skip_step_nothing_is_skipped(tmp_path):
    monitor = StabilityMonitor(StabilityConfig(window=8, k=4, forensics=False, layer_stats_every=0), tmp_path)
    lines = _run(monitor, FakeTrainer(), _series(spikes=(20,)))
    assert not any(m["skipped"] for m in lines) and lines[20]["loss_spike"]


def test_rollback_is_requested_after_k_spikes_in_a_row(tmp_path):
    trainer = FakeTrainer()
    monitor = StabilityMonitor(StabilityConfig(window=8, k=4, forensics=False, layer_stats_every=0,
                                               rollback=True, rollback_after=2), tmp_path)
    series = _series(n=30)
    series[25], series[26] = (5.0, 1.0), (500.0, 1.0)  # two in a row, the second above the first's inflated std
    _run(monitor, trainer, series)
    assert trainer.rollbacks == [("2 spikes in a row", 26)]  # back to before the streak's first step


def test_state_round_trip(tmp_path):
    cfg = StabilityConfig(window=8, k=4, forensics=False, layer_stats_every=0)
    series = _series(spikes=(20, 33))
    whole = _run(StabilityMonitor(cfg, tmp_path), FakeTrainer(), series)
    first = StabilityMonitor(cfg, tmp_path)
    trainer = FakeTrainer()
    _run(first, trainer, series[:25])
    second = StabilityMonitor(cfg, tmp_path)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    resumed = _run(second, trainer, series[25:])
    assert resumed == whole[25:]


def test_forensics_file_names_instances_text_and_repeats(tmp_path):
    tokens = np.array([[5, 6, 7, 8] * 2, [9] * 8])
    batch = Batch(torch.as_tensor(tokens), torch.as_tensor(tokens), torch.zeros(2, 8, dtype=torch.long),
                  torch.tensor([40, 41]))
    trainer = FakeTrainer()
    trainer.last_batches = [batch]
    tokenizer = SimpleNamespace(decode=lambda ids: " ".join(map(str, ids)))
    monitor = StabilityMonitor(StabilityConfig(window=8, k=4, layer_stats_every=0), tmp_path, tokenizer,
                               locate=lambda ids: (np.zeros(len(ids), int), np.asarray(ids) - 40))
    _run(monitor, trainer, _series(n=22, spikes=(20,)))
    saved = json.loads((tmp_path / "spikes/step000021.json").read_text())
    assert [r["instance_id"] for r in saved["instances"]] == [40, 41]
    assert [r["instance"] for r in saved["instances"]] == [0, 1]
    assert saved["instances"][1]["text"] == "9 9 9 9 9 9 9 9"
    assert saved["instances"][0]["longest_repeat"] == {"period": 4, "repeats": 2, "start": 0}
    assert saved["instances"][1]["longest_repeat"]["repeats"] == 8
    assert saved["metrics"]["loss_spike"] is True
    assert sorted(p.name for p in (tmp_path / "spikes").iterdir()) == ["step000021.json"]


def test_layer_statistics_every_n_steps(tmp_path):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = FakeTrainer(model)
    monitor = StabilityMonitor(StabilityConfig(layer_stats_every=2, forensics=False), tmp_path)
    x = torch.randint(0, 64, (2, 8))
    lines = []
    for _ in range(2):
        monitor.on_step_start(trainer)
        logits = model(x)
        logits.float().pow(2).mean().backward()
        monitor.before_optimizer_step(trainer, 1.0, 1.0)
        opt.step()
        opt.zero_grad()
        trainer.state.step += 1
        metrics = {"step": trainer.state.step, "loss": 1.0, "grad_norm": 1.0}
        monitor.on_step_end(trainer, metrics)
        lines.append(metrics)
    assert "layer/0/grad_norm" not in lines[0]
    stats = lines[1]
    for i in range(2):
        for key in ("grad_norm", "weight_norm", "update_ratio", "act_rms", "act_max", "attn_logit_max"):
            assert stats[f"layer/{i}/{key}"] > 0, key
    assert stats["output_logit_max"] == float(logits.detach().abs().max())
    assert stats["layer/0/act_max"] >= stats["layer/0/act_rms"]
    # The update ratio is the SGD step's size relative to the weights, computed independently here.
    assert 0 < stats["layer/1/update_ratio"] < 1
    assert not model._forward_hooks and not model.blocks[0]._forward_hooks
