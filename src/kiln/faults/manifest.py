"""Crash-safe checkpoint folders: a manifest of every file's size and SHA-256, written last.

The protocol, for a checkpoint of step N in run folder RUN:

    1. write every file into RUN/.tmp-stepN/          (a crash here leaves only a hidden temp folder)
    2. write_manifest(RUN/.tmp-stepN)                  (fsyncs each file, then writes MANIFEST.json atomically)
    3. os.replace(RUN/.tmp-stepN, RUN/stepN); fsync RUN   (`commit_checkpoint` does 2 and 3)

A folder is a complete checkpoint only if it has a MANIFEST.json and every file it lists has the listed size
(and, with `hashes=True`, the listed SHA-256). The manifest is written after the files are durable, so a
power cut can never leave a manifest that describes data still in the page cache.

Files in the folder that the manifest does not list are allowed and ignored: the loaders read only files the
checkpoint wrote (torch.distributed.checkpoint finds its shards through `.metadata`, which is listed), and
tools such as `kiln export` or a user's notes may add files beside a finished checkpoint. Verification is
about whether what was written is still there and intact, not about what else appeared later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from kiln.errors import KilnError

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20

log = logging.getLogger("kiln.faults")


class CheckpointInvalid(KilnError):
    """A checkpoint folder that is incomplete or damaged; `reasons` name each bad file."""

    def __init__(self, path: Path, reasons: list[str]) -> None:
        self.path, self.reasons = path, reasons
        super().__init__(f"checkpoint {path} is invalid: {'; '.join(reasons)}")


class NoValidCheckpoint(KilnError):
    """Checkpoints exist but none verifies; starting over silently would throw the run away."""


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new files, renames) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: temp file in the same folder, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _listed_files(folder: Path) -> list[Path]:
    skip = {MANIFEST, f".{MANIFEST}.tmp"}
    return sorted(p for p in folder.rglob("*") if p.is_file() and not (p.parent == folder and p.name in skip))


def sha256_file(path: Path, fsync: bool = False) -> str:
    """The file's SHA-256; `fsync` also makes it durable, since the manifest writer reads every file anyway."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return digest.hexdigest()


def manifest_entries(folder: Path, paths: list[Path] | None = None) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} for `paths` (default: every file under `folder`), each fsynced.

    In a sharded save every rank can hash the files it wrote, in parallel; rank 0 then passes the union of the
    gathered entries to `write_manifest` instead of reading every shard itself.
    """
    folder = Path(folder)
    entries = {}
    for path in _listed_files(folder) if paths is None else sorted(paths):
        sha = sha256_file(path, fsync=True)
        entries[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": sha}
    return entries


def write_manifest(folder: Path, entries: dict[str, dict] | None = None) -> Path:
    """Write MANIFEST.json listing every file under `folder` (relative path, size, SHA-256), last and atomically.

    Each listed file is fsynced before the manifest exists, and every sub-folder too, so the manifest never
    outlives the data it vouches for. `entries` from `manifest_entries` skip the hashing here.
    """
    folder = Path(folder)
    entries = manifest_entries(folder) if entries is None else entries
    for sub in sorted({(folder / rel).parent for rel in entries} | {folder}):
        fsync_dir(sub)
    manifest = folder / MANIFEST
    atomic_write_bytes(manifest, json.dumps({"format": MANIFEST_FORMAT, "files": entries}, indent=1).encode())
    return manifest


def commit_checkpoint(tmp: Path, final: Path) -> Path:
    """Seal the finished temp folder `tmp` with its manifest and rename it to `final` (replacing an old `final`)."""
    write_manifest(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def read_manifest(folder: Path) -> dict[str, dict]:
    """The manifest's {relative path: {"size", "sha256"}}; CheckpointInvalid if it is absent or unreadable."""
    path = folder / MANIFEST
    if not path.is_file():
        raise CheckpointInvalid(folder, [f"no {MANIFEST} (the checkpoint was never finished, or predates manifests)"])
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
        bad = [rel for rel, e in files.items() if not (isinstance(e, dict) and isinstance(e.get("size"), int)
                                                       and isinstance(e.get("sha256"), str))]
        if bad:
            raise ValueError(f"entries without an integer size and a sha256: {bad[:5]}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointInvalid(folder, [f"{MANIFEST} is unreadable ({err})"]) from err
    return files


def _check_file(folder: Path, rel: str, entry: dict, hashes: bool) -> str | None:
    """The problem with one listed file, or None."""
    if rel.startswith("/") or ".." in rel.split("/"):
        return f"{MANIFEST} lists a path outside the folder: {rel!r}"
    path = folder / rel
    if not path.is_file():
        return f"missing file {rel}"
    size = path.stat().st_size
    if size != entry["size"]:
        how = "truncated" if size < entry["size"] else "grown"
        return f"{rel} is {size} bytes but the manifest says {entry['size']} ({how})"
    if hashes:
        sha = sha256_file(path)
        if sha != entry["sha256"]:
            return f"{rel} has SHA-256 {sha[:12]}… but the manifest says {entry['sha256'][:12]}… (corrupted)"
    return None


def verify_checkpoint(folder: Path, hashes: bool = False) -> None:
    """Raise CheckpointInvalid naming every missing, truncated or (with `hashes`) corrupted file.

    Sizes alone are cheap (one stat per file) and catch interrupted and truncated writes; a flipped byte keeps
    the size, so only `hashes=True` (reading every byte) catches bit rot and other silent corruption.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointInvalid(folder, ["not a directory"])
    files = read_manifest(folder)
    problems = [p for rel, entry in sorted(files.items()) if (p := _check_file(folder, rel, entry, hashes))]
    if problems:
        raise CheckpointInvalid(folder, problems)


def newest_valid_checkpoint(run_dir: Path, list_fn: Callable[[Path], list[Path]], hashes: bool = False,
                            warn: Callable[[str], None] = log.warning, allow_fresh: bool = False) -> Path | None:
    """The newest checkpoint of `run_dir` that verifies, skipping (with a warning naming it and why) newer bad ones.

    `list_fn(run_dir)` gives the candidates oldest first (`kiln.train.checkpointing.list_checkpoints`). None when
    there are no candidates. When there are candidates but none verifies, raise NoValidCheckpoint, because
    silently starting over would discard the run; `allow_fresh=True` warns and returns None instead.
    """
    candidates = list(list_fn(run_dir))
    failures = []
    for path in reversed(candidates):
        try:
            verify_checkpoint(path, hashes=hashes)
        except CheckpointInvalid as err:
            warn(f"skipping checkpoint {path}: {'; '.join(err.reasons)}")
            failures.append(f"{path.name} ({'; '.join(err.reasons)})")
            continue
        if failures:
            warn(f"resuming from the older checkpoint {path}")
        return path
    if not candidates:
        return None
    if allow_fresh:
        warn(f"none of the {len(candidates)} checkpoints in {run_dir} verifies; starting from scratch as allowed")
        return None
    raise NoValidCheckpoint(
        f"none of the {len(candidates)} checkpoints in {run_dir} verifies: {', '.join(failures)}. "
        "Refusing to start over silently; move or delete them to start from scratch, or repair them")
