"""Fake run folders with known metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def fake_metrics(steps: int, loss_spikes=(), grad_spikes=(), skipped=(), layers: int = 0, monitor: bool = True,
                 layer_every: int = 5, val_every: int = 10, scale: float = 1.0) -> list[dict[str, Any]]:
    """A decaying loss and grad norm with spikes at the given steps, shaped like the trainer's metrics lines."""
    records = []
    flagged = 0
    for step in range(1, steps + 1):
        loss = scale * (2.0 + 3.0 * math.exp(-step / 10)) + (2.0 if step in loss_spikes else 0.0)
        grad_norm = scale * (1.0 + 1.0 / step) * (20.0 if step in grad_spikes else 1.0)
        record = {"step": step, "loss": loss, "z_loss": 1e-4, "grad_norm": grad_norm, "lr": 1e-3 * min(1, step / 5),
                  "tokens": 512 * step, "tokens_per_s": 1000.0}
        if step % val_every == 0:
            record.update(val_loss=loss + 0.1 * math.sin(step), val_ppl=math.exp(loss), val_bpb=loss / 3)
        if monitor:
            is_spike = step in loss_spikes or step in grad_spikes
            flagged += is_spike
            record.update(loss_spike=step in loss_spikes, grad_norm_spike=step in grad_spikes,
                          spike_score=float(is_spike), spike_score_cum=flagged / step, skipped=step in skipped,
                          grad_norm_growth=None if step < 5 else -0.01 * step)
        if layers and step % layer_every == 0:
            for i in range(layers):
                record.update({f"layer/{i}/grad_norm": grad_norm / (i + 1), f"layer/{i}/weight_norm": 10.0 + i + step,
                               f"layer/{i}/update_ratio": 1e-3 / (i + 1), f"layer/{i}/act_rms": 1.0 + i,
                               f"layer/{i}/act_max": 10.0 * (i + 1), f"layer/{i}/attn_logit_max": 5.0 + step / 10})
            record["output_logit_max"] = 20.0 + step / 10
        records.append(record)
    return records


def write_run(run_dir: Path, records: list[dict[str, Any]]) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir
