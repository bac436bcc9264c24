"""Reading documents from text and JSONL files, counting every document that is skipped and why.

Inputs are checked up front (missing paths, unsupported files, empty folders) so that a bad path fails before any
tokenizing starts; problems inside files are counted per reason, with the first few locations, never dropped silently.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from kiln.errors import KilnError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".json.gz", ".jsonl.gz", ".jsonl.zst")
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES
UTF8_POLICIES = ("replace", "skip")
EXAMPLES_KEPT = 5


@dataclass
class SkipReport:
    """Counts of skipped or altered documents per reason, with the first few `file:line` locations of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(where)

    def to_dict(self) -> dict:
        return {reason: {"count": count, "first": self.examples.get(reason, [])}
                for reason, count in sorted(self.counts.items())}

    def lines(self) -> list[str]:
        """One human line per reason, e.g. `invalid_json: 3 (a.jsonl:2, a.jsonl:7, ...)`."""
        out = []
        for reason, info in self.to_dict().items():
            more = ", ..." if info["count"] > len(info["first"]) else ""
            out.append(f"{reason}: {info['count']} ({', '.join(info['first'])}{more})")
        return out


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def resolve_inputs(inputs: list[Path], report: SkipReport) -> list[Path]:
    """Expand folders (recursively, sorted, so the order is the same on every machine) into supported files."""
    files: list[Path] = []
    for path in map(Path, inputs):
        if not path.exists():
            raise KilnError(f"input not found: {path}")
        if path.is_file():
            if _suffix(path) is None:
                raise KilnError(f"unsupported input file {path}: expected one of {', '.join(SUPPORTED_SUFFIXES)}")
            files.append(path)
            continue
        found = []
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            if _suffix(child) is None:
                report.add("ignored_file", str(child))
            else:
                found.append(child)
        if not found:
            raise KilnError(f"folder {path} holds no input files: expected files ending in "
                            f"{', '.join(SUPPORTED_SUFFIXES)}")
        files.extend(found)
    return files


def _open_binary(path: Path) -> io.BufferedIOBase:
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def _decode(raw: bytes, utf8_errors: str, where: str, report: SkipReport) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if utf8_errors == "skip":
            report.add("invalid_utf8_skipped", where)
            return None
        report.add("invalid_utf8_replaced", where)
        return raw.decode("utf-8", errors="replace")


def _jsonl_documents(path: Path, text_field: str, utf8_errors: str, report: SkipReport) -> Iterator[str]:
    with _open_binary(path) as stream:
        for line_number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line_number}"
            line = _decode(raw, utf8_errors, where, report)
            if line is None:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                report.add("invalid_json", where)
                continue
            text = record.get(text_field) if isinstance(record, dict) else None
            if text is None:
                report.add("missing_text_field", where)
            elif not isinstance(text, str):
                report.add("text_field_not_a_string", where)
            elif not text:
                report.add("empty_document", where)
            else:
                yield text


def read_documents(path: Path, text_field: str = "text", utf8_errors: str = "replace",
                   report: SkipReport | None = None) -> Iterator[str]:
    """Yield the documents of one file: a whole `.txt`/`.md` file, or each JSONL line's `text_field`."""
    if utf8_errors not in UTF8_POLICIES:
        raise KilnError(f"utf8 error policy {utf8_errors!r} is not one of {', '.join(UTF8_POLICIES)}")
    report = report if report is not None else SkipReport()
    try:
        if _suffix(path) in TEXT_SUFFIXES:
            text = _decode(path.read_bytes(), utf8_errors, str(path), report)
            if text is not None and not text.strip():
                report.add("empty_document", str(path))
            elif text is not None:
                yield text
        else:
            yield from _jsonl_documents(path, text_field, utf8_errors, report)
    except (OSError, EOFError, zstandard.ZstdError) as err:
        raise KilnError(f"cannot read {path}: {err} (is the file truncated or not really {_suffix(path)}?)") from err
