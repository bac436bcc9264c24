"""`kiln prepare` throughput in MB of UTF-8 text per second (target: at least 2 MB/s per core with dolma2).

    python benchmarks/bench_prepare.py                      # built-in corpus x4, dolma2 if ../shared has it
    python benchmarks/bench_prepare.py --tokenizer builtin --workers 1 --copies 2
The time is wall-clock for the whole `prepare_dataset` call: reading, worker start-up, tokenizing and writing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from kiln.data.prepare import BUILTIN_CORPUS_PATH, prepare_dataset

DOLMA2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "tokenizers" / "dolma2.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", type=Path, help="files or folders (default: the built-in corpus)")
    parser.add_argument("--tokenizer", default=str(DOLMA2) if DOLMA2.is_file() else "builtin")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--copies", type=int, default=4, help="how many copies of the inputs to tokenize")
    parser.add_argument("--fast-encode", action="store_true", help="use kiln's cached pre-tokenizer (opt-in)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "inputs"
        folder.mkdir()
        for copy in range(args.copies):
            for i, path in enumerate(args.inputs or [BUILTIN_CORPUS_PATH]):
                shutil.copy(path, folder / f"{copy:03d}-{i:03d}-{path.name}")
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        out = prepare_dataset([folder], Path(tmp) / "ds", args.tokenizer, workers=args.workers, progress=False,
                              fast_encode=args.fast_encode)
        seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu_started
        meta = json.loads((out / "dataset.json").read_text())
    megabytes = meta["text_bytes"] / 1e6
    cores = max(1, min(args.workers, os.cpu_count() or 1))
    encoder = "kiln fast encoder" if args.fast_encode else "tokenizers library"
    print(f"tokenizer {meta['tokenizer']['name']} ({encoder}), {args.workers} worker(s) on {os.cpu_count()} cores: "
          f"{megabytes:.1f} MB, {meta['num_tokens']:,} tokens in {seconds:.2f}s = {megabytes / seconds:.2f} MB/s "
          f"({megabytes / seconds / cores:.2f} MB/s per core, {meta['num_tokens'] / seconds / 1e6:.2f}M tokens/s)")
    print(f"CPU time of this process and its workers: {cpu_seconds:.2f}s = {megabytes / cpu_seconds:.2f} MB per "
          "CPU-second (what one uncontended core sustains; wall-clock figures drop when other jobs share the cores)")


def _cpu_seconds() -> float:
    """User + system time of this process and its finished children (the pool's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
