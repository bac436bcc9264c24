"""Write this Python's standard library source as a JSONL corpus (one document per .py file) for `kiln prepare`.

The ladder (docs/ladder.md) needs more tokens than the shipped corpora hold; every machine with Python has these
~30 MB of text. site-packages is left out (it is whatever happens to be installed), so the corpus depends only on
the Python version, which is recorded in each document.

    python scripts/stdlib_corpus.py --out data/stdlib.jsonl.zst
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import sysconfig
from pathlib import Path

import zstandard


def stdlib_files(root: Path) -> list[Path]:
    """Every .py file under the standard library folder, sorted, site-packages excluded."""
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def write_corpus(root: Path, out: Path) -> tuple[int, int]:
    """Write one {"text", "path", "python"} line per file; return (documents, characters)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    version = ".".join(map(str, sys.version_info[:3]))
    docs = chars = 0
    with out.open("wb") as raw, zstandard.ZstdCompressor(level=10).stream_writer(raw) as zst:
        text_out = io.TextIOWrapper(zst, encoding="utf-8")
        for path in stdlib_files(root):
            text = path.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                continue
            record = {"text": text, "path": str(path.relative_to(root)), "python": version}
            text_out.write(json.dumps(record, ensure_ascii=False) + "\n")
            docs, chars = docs + 1, chars + len(text)
        text_out.flush()
    return docs, chars


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the .jsonl.zst file to write")
    args = parser.parse_args()
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, chars = write_corpus(root, args.out)
    print(f"wrote {args.out}: {docs:,} documents, {chars:,} characters from {root}")


if __name__ == "__main__":
    main()
