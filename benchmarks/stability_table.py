"""The results table of docs/stability.md from two finished sweeps (one row per recipe and learning rate).

    python benchmarks/stability_table.py sweeps/olmo0424 sweeps/olmo2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kiln.experiments.runlog import read_run, summarize


def run_figures(run_dir: Path) -> dict[str, float]:
    run = read_run(run_dir)
    summary = summarize(run)
    _, grad = run.series("grad_norm")
    last = run.records[-1]
    attn = max(v for k, v in last.items() if k.startswith("layer/") and k.endswith("attn_logit_max"))
    return {"val": summary["final_val_loss"], "score": summary["spike_score_cum"],
            "loss_spikes": summary["loss_spikes"], "grad_spikes": summary["grad_spikes"],
            "growth": summary["grad_norm_growth"], "late_grad": sum(grad[-20:]) / len(grad[-20:]), "attn": attn}


def cell(seeds: list[dict[str, float]], key: str, fmt: str) -> str:
    return " / ".join(format(s[key], fmt) for s in seeds)


def table_rows(sweeps: list[Path]) -> list[str]:
    rows = []
    for sweep in sweeps:
        for lr in ("1e-2", "3e-2"):
            seeds = [run_figures(p) for p in sorted(sweep.glob(f"*lr*{lr}*seed*")) if p.is_dir()]
            cells = [cell(seeds, key, fmt) for key, fmt in (("val", ".3f"), ("score", ".3f"), ("loss_spikes", "d"),
                     ("grad_spikes", "d"), ("growth", "+.2f"), ("late_grad", ".2f"), ("attn", ".0f"))]
            rows.append(f"| {sweep.name} | {lr} | " + " | ".join(cells) + " |")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path)
    print("\n".join(table_rows(parser.parse_args().sweeps)))
