"""`prepare`: text files in, a dataset folder of token shards out (format in `shards.py`).

The main process reads documents in a fixed order and hands chunks to tokenizer worker processes, keeping a bounded
number in flight and writing results back in submission order, so the shards are byte-identical for any worker count.
The folder is built under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from kiln import __version__
from kiln.data import shards
from kiln.data.fast_encode import FastEncoder
from kiln.data.sources import SkipReport, read_documents, resolve_inputs
from kiln.data.tokenizer import (
    ASSETS_DIR,
    BUILTIN_TOKENIZER,
    eos_id,
    load_tokenizer,
    tokenizer_hash,
    tokenizer_name,
    vocab_size,
)
from kiln.errors import KilnError

BUILTIN_CORPUS_PATH = ASSETS_DIR / "shakespeare.jsonl.zst"
CHUNK_CHARS = 1 << 20  # about 1 MB of text per task: big enough to amortise pickling, small enough to balance

_worker_tokenizer: Tokenizer | None = None
_worker_fast: FastEncoder | None = None
_worker_eos: int = 0


class DatasetExistsError(KilnError):
    """The output folder already holds something and overwriting was not asked for."""


def _init_worker(tokenizer_json: str, fast_encode: bool) -> None:
    global _worker_tokenizer, _worker_fast, _worker_eos
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)
    # Text that happens to contain "<|endoftext|>" must not become a real EOS id inside a document.
    _worker_tokenizer.encode_special_tokens = True
    _worker_fast = FastEncoder.build(_worker_tokenizer) if fast_encode else None
    _worker_eos = eos_id(_worker_tokenizer)


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids of the chunk with EOS after each document, plus each document's token and UTF-8 byte counts."""
    if _worker_fast is not None:
        encoded = [_worker_fast.encode(text) for text in texts]
    else:
        encoded = [e.ids for e in _worker_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    doc_tokens = np.fromiter((len(doc) + 1 for doc in encoded), dtype=np.int64, count=len(encoded))
    ids = np.empty(int(doc_tokens.sum()), dtype=np.uint32)
    ends = np.cumsum(doc_tokens)
    for doc, end in zip(encoded, ends, strict=True):
        ids[end - len(doc) - 1:end - 1] = doc
    ids[ends - 1] = _worker_eos
    doc_bytes = np.fromiter((len(t.encode("utf-8")) for t in texts), dtype=np.int64, count=len(texts))
    return ids, doc_tokens, doc_bytes


def _chunks(files: list[Path], text_field: str, utf8_errors: str,
            report: SkipReport) -> Iterator[tuple[list[str], list[int]]]:
    """Documents grouped into chunks of about CHUNK_CHARS, each with the index of the file every document came from."""
    texts, file_ids, chars = [], [], 0
    for file_id, path in enumerate(files):
        for text in read_documents(path, text_field, utf8_errors, report):
            texts.append(text)
            file_ids.append(file_id)
            chars += len(text)
            if chars >= CHUNK_CHARS:
                yield texts, file_ids
                texts, file_ids, chars = [], [], 0
    if texts:
        yield texts, file_ids


def _tokenize_in_order(chunks: Iterator[tuple[list[str], list[int]]], tokenizer_json: str, workers: int,
                       fast_encode: bool) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, np.ndarray], list[int]]]:
    """Results in submission order; at most 2 chunks per worker in flight so memory stays bounded."""
    if workers == 0:
        _init_worker(tokenizer_json, fast_encode)
        for texts, file_ids in chunks:
            yield _encode_chunk(texts), file_ids
        return
    with _single_threaded_tokenizers():
        pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (tokenizer_json, fast_encode))
    with pool:
        pending: deque = deque()
        for texts, file_ids in chunks:
            pending.append((pool.apply_async(_encode_chunk, (texts,)), file_ids))
            if len(pending) >= 2 * workers:
                result, ids = pending.popleft()
                yield result.get(), ids
        while pending:
            result, ids = pending.popleft()
            yield result.get(), ids


@contextmanager
def _single_threaded_tokenizers() -> Iterator[None]:
    """Workers started inside see TOKENIZERS_PARALLELISM=false: one thread each, as many workers as cores."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not overwrite:
        raise DatasetExistsError(f"output folder {out_dir} already exists; pass --overwrite to replace it or "
                                 "choose another --out")


def _publish(tmp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Rename the finished folder into place; an existing one is replaced only when asked."""
    _check_out_dir(out_dir, overwrite)
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        out_dir.rename(old)
    tmp_dir.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


WORKER_BYTES = 16 * 2**20  # input bytes per tokenizer worker by default: about 10 s of tokenizing each


def default_workers(files: list[Path]) -> int:
    """One worker per WORKER_BYTES of input, at most one per core; 0 (this process) below that. A spawned worker
    imports the caller's main module (torch and all): 112 s for 16 of them on a fresh GPU machine, to tokenize a
    5 MB corpus that takes 3 s in one process."""
    size = sum(f.stat().st_size for f in files)
    return min(os.cpu_count() or 1, size // WORKER_BYTES)


def prepare_dataset(inputs: list[Path], out_dir: Path, tokenizer: str | Path = BUILTIN_TOKENIZER, *,
                    text_field: str = "text", utf8_errors: str = "replace", workers: int | None = None,
                    shard_tokens: int = shards.DEFAULT_SHARD_TOKENS, overwrite: bool = False,
                    progress: bool = True, fast_encode: bool = False) -> Path:
    """Tokenize `inputs` (the built-in corpus when empty) into a dataset folder at `out_dir` and return it.

    `workers=0` tokenizes in this process; the default is one worker per WORKER_BYTES of input, at most one per
    CPU core (`default_workers`).
    `fast_encode` opts into `kiln.data.fast_encode` (about 3-5x faster, same ids on every corpus we checked, but
    its pre-tokenizer is a translation of the library's, so the library stays the default).
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    if shard_tokens < 1:
        raise KilnError(f"shard_tokens must be a positive number of tokens, got {shard_tokens}")
    report = SkipReport()
    files = resolve_inputs(list(inputs) or [BUILTIN_CORPUS_PATH], report)
    workers = default_workers(files) if workers is None else workers
    tok = load_tokenizer(tokenizer)
    vocab, eos = vocab_size(tok), eos_id(tok)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        writer = shards.ShardWriter(tmp_dir, shards.dtype_for_vocab(vocab), shard_tokens)
        try:
            totals = _write_tokens(files, tok, writer, text_field, utf8_errors, workers, progress, report,
                                   fast_encode)
        finally:
            writer.close()
        if not totals["doc_tokens"]:
            raise KilnError(f"no documents found in {', '.join(map(str, files))}"
                            + (f"; skipped: {'; '.join(report.lines())}" if report.counts else ""))
        doc_tokens = np.concatenate(totals["doc_tokens"])
        doc_starts = np.concatenate([[0], np.cumsum(doc_tokens)]).astype(np.int64)
        np.save(tmp_dir / shards.DOCUMENTS_FILE, doc_starts)
        (tmp_dir / shards.TOKENIZER_FILE).write_text(tok.to_str(), encoding="utf-8")
        meta = {
            "format_version": shards.FORMAT_VERSION, "kiln_version": __version__,
            "tokenizer": {"name": tokenizer_name(tokenizer), "hash": tokenizer_hash(tok), "vocab_size": vocab,
                          "file": shards.TOKENIZER_FILE},
            "dtype": writer.dtype.name, "eos_id": eos, "num_documents": len(doc_tokens),
            "num_tokens": int(doc_starts[-1]), "text_bytes": int(totals["bytes"]), "shard_tokens": shard_tokens,
            "shards": shards.shard_entries(writer.shard_sizes, doc_starts[:-1], shard_tokens),
            "documents_file": shards.DOCUMENTS_FILE,
            "sources": [{"path": str(path), **counts} for path, counts in zip(files, totals["per_file"], strict=True)],
            "skipped": report.to_dict(),
            "args": {"inputs": [str(p) for p in inputs], "tokenizer": str(tokenizer), "text_field": text_field,
                     "utf8_errors": utf8_errors, "shard_tokens": shard_tokens, "workers": workers,
                     "fast_encode": fast_encode},
        }
        (tmp_dir / shards.META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _publish(tmp_dir, out_dir, overwrite)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out_dir


def _write_tokens(files: list[Path], tok: Tokenizer, writer: shards.ShardWriter, text_field: str, utf8_errors: str,
                  workers: int, progress: bool, report: SkipReport, fast_encode: bool = False) -> dict:
    """Stream every document through the tokenizer workers into the shards; return per-document and per-file counts."""
    doc_tokens: list[np.ndarray] = []
    per_file = np.zeros((len(files), 3), dtype=np.int64)  # documents, tokens, bytes
    chunks = _chunks(files, text_field, utf8_errors, report)
    with tqdm(unit="B", unit_scale=True, desc="tokenizing", disable=not progress, dynamic_ncols=True) as bar:
        for (ids, lengths, nbytes), file_ids in _tokenize_in_order(chunks, tok.to_str(), workers, fast_encode):
            writer.write(ids)
            doc_tokens.append(lengths)
            np.add.at(per_file, np.asarray(file_ids), np.stack([np.ones_like(lengths), lengths, nbytes], axis=1))
            bar.update(int(nbytes.sum()))
    keys = ("documents", "tokens", "bytes")
    return {"doc_tokens": doc_tokens, "bytes": int(per_file[:, 2].sum()),
            "per_file": [dict(zip(keys, map(int, row), strict=True)) for row in per_file]}


def cache_root() -> Path:
    """$KILN_CACHE, else ~/.cache/kiln."""
    return Path(os.environ.get("KILN_CACHE") or Path.home() / ".cache" / "kiln")


def builtin_dataset(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """The built-in corpus prepared with the built-in tokenizer, made once per tokenizer version and reused."""
    tok_hash = tokenizer_hash(load_tokenizer(BUILTIN_TOKENIZER))
    folder = Path(cache_dir or cache_root()) / "datasets" / f"builtin-{tok_hash[:12]}"
    if (folder / shards.META_FILE).is_file():
        return folder
    try:
        return prepare_dataset([], folder, BUILTIN_TOKENIZER, overwrite=folder.exists(), progress=progress)
    except DatasetExistsError:
        if (folder / shards.META_FILE).is_file():  # another process (e.g. another rank) finished first
            return folder
        raise
