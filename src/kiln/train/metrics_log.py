"""RUN/metrics.jsonl: one JSON line per step, appended by the trainer and read by reports and sweeps.

It survives `kill -9` and power loss at any moment. The trainer appends a step's line before that step's checkpoint
is written, and fsyncs it first on checkpoint steps, so a resume point never lacks its line. Lines past the
resume point are trimmed by an atomic rewrite (temporary file, fsync, rename). A kill in the middle of an append
leaves a torn last line, which readers drop with a warning.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kiln.errors import KilnError
from kiln.faults.manifest import atomic_write_bytes

METRICS_FILE = "metrics.jsonl"
log = logging.getLogger("kiln.train")


def parse_metrics(file: Path) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """(line, record) of every line in file order, and whether a torn last line was dropped.

    Any other line that is not a JSON object with a step number is an error naming its line number.
    """
    lines = [(n, line) for n, line in enumerate(file.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                return records, True
            raise KilnError(f"{file} line {n} is not JSON: {err}") from err
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            raise KilnError(f"{file} line {n} has no step number: {line[:80]}")
        records.append((line, record))
    return records, False


def trim_metrics(file: Path, last_step: int) -> list[str]:
    """Keep the lines of steps up to `last_step`, dropping a torn last line; return the lines removed.

    The rewrite is atomic: a kill during it leaves the old file or the new one, never a truncated history.
    """
    if not file.exists():
        return []
    text = file.read_text()
    records, torn = parse_metrics(file)
    if torn:
        log.warning("dropped a torn last line of %s (the run was killed while writing it)", file)
    kept = [line for line, record in records if record["step"] <= last_step]
    removed = [line for line, record in records if record["step"] > last_step]
    new_text = "".join(line + "\n" for line in kept)
    if new_text != text:
        atomic_write_bytes(file, new_text.encode("utf-8"))
    return removed
