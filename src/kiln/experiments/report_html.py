"""The self-contained HTML page of `kiln report`: summary table, spike events, inline plots, forensics links."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from kiln.experiments.runlog import FLAGS, FORENSICS_DIR, SUMMARY_COLUMNS, RunLog, summarize


def _cell(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1000 else f"{value:.4g}"
    return html.escape(str(value))


def _table(headings: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _spike_events(runs: list[RunLog], limit: int = 50) -> str:
    """The first `limit` flagged lines per run, in the order logged (a rolled-back step shows before its replay)."""
    rows = []
    for run in runs:
        flagged = [r for r in run.logged if any(r.get(k) is True for k in FLAGS)]
        rows += [[run.label, r["step"], r.get("loss"), r.get("grad_norm"), "yes" if r.get("loss_spike") else "",
                  "yes" if r.get("grad_norm_spike") else "", "yes" if r.get("skipped") else ""]
                 for r in flagged[:limit]]
    if not rows:
        return "<p>No spike flags in the metrics.</p>"
    return _table(["run", "step", "loss", "grad norm", "loss spike", "grad spike", "skipped"], rows)


def _files_section(runs: list[RunLog], page_dir: Path) -> str:
    """Forensics files and rollbacks, linked relative to the page (the links work beside the run folders)."""
    parts = []
    for run in runs:
        items = [f'<li><a href="{html.escape(_relative(p, page_dir))}">{html.escape(p.name)}</a></li>'
                 for p in run.forensics()]
        rollbacks = run.rollbacks()
        if items:
            parts.append(f"<h3>{html.escape(run.label)}: forensics ({len(items)} files in {FORENSICS_DIR}/)</h3>"
                         f"<ul>{''.join(items)}</ul>")
        if rollbacks:
            parts.append(f"<h3>{html.escape(run.label)}: {len(rollbacks)} rollbacks</h3>"
                         f"<pre>{html.escape(chr(10).join(rollbacks))}</pre>")
    return "".join(parts) or "<p>No forensics files or rollbacks.</p>"


def _relative(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{path.stem}" src="data:image/png;base64,{data}"></figure>'


def render_html(runs: list[RunLog], images: dict[str, Path], page_dir: Path) -> str:
    """The page: summary table, spike events, every plot inline, then forensics and rollbacks."""
    summary = _table([h for _, h in SUMMARY_COLUMNS],
                     [[s[key] for key, _ in SUMMARY_COLUMNS] for s in map(summarize, runs)])
    sources = "".join(f"<li>{html.escape(run.label)}: <code>{html.escape(str(run.path.resolve()))}</code></li>"
                      for run in runs)
    plots = "".join(f"<h3>{html.escape(stem.replace('_', ' '))}</h3>{_image(path)}" for stem, path in images.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kiln report: {html.escape(", ".join(r.label for r in runs))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child {{ text-align: left; }}
img {{ max-width: 100%; }} figure {{ margin: 0 0 1.5em 0; }} pre {{ background: #f6f6f6; padding: 0.5em; }}
</style></head><body>
<h1>kiln report</h1>
<p>Generated {datetime.now().strftime("%Y-%m-%d %H:%M")} from:</p><ul>{sources}</ul>
<h2>Summary</h2>{summary}
<p>Spike score: fraction of steps flagged as a loss or grad-norm spike. &ndash; means the run did not log it.</p>
<h2>Spike events</h2>{_spike_events(runs)}
<h2>Plots</h2>{plots}
<h2>Forensics and rollbacks</h2>{_files_section(runs, page_dir)}
</body></html>
"""
