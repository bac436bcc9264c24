"""Checkpoint manifests: what verification catches, and how resumption picks the newest intact checkpoint."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from kiln.errors import KilnError
from kiln.faults import manifest
from kiln.faults.manifest import (
    MANIFEST,
    CheckpointInvalid,
    NoValidCheckpoint,
    commit_checkpoint,
    newest_valid_checkpoint,
    verify_checkpoint,
    write_manifest,
)


def list_steps(run_dir: Path) -> list[Path]:
    """Like kiln.train.checkpointing.list_checkpoints: step folders, oldest first."""
    return sorted((p for p in run_dir.glob("step*") if p.is_dir() and p.name[4:].isdigit()),
                  key=lambda p: int(p.name[4:]))


def save(run_dir: Path, step: int, payload: bytes = b"weights " * 1000) -> Path:
    tmp = run_dir / f".tmp-step{step:06d}"
    (tmp / "dcp").mkdir(parents=True)
    (tmp / "dcp" / "__0_0.distcp").write_bytes(payload + bytes([step % 256]))
    (tmp / "train_state.json").write_text(json.dumps({"step": step}))
    return commit_checkpoint(tmp, run_dir / f"step{step:06d}")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_manifest_lists_every_file_with_size_and_hash(tmp_path):
    ckpt = save(tmp_path, 1)
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    assert set(files) == {"dcp/__0_0.distcp", "train_state.json"}
    assert files["train_state.json"]["size"] == (ckpt / "train_state.json").stat().st_size
    assert files["dcp/__0_0.distcp"]["sha256"] == manifest.sha256_file(ckpt / "dcp" / "__0_0.distcp")
    verify_checkpoint(ckpt, hashes=True)
    assert not list(tmp_path.glob(".tmp-*")) and not list(ckpt.glob(f".{MANIFEST}*"))


def test_truncated_file_is_detected_by_size(tmp_path):
    ckpt = save(tmp_path, 1)
    shard = ckpt / "dcp" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointInvalid, match=r"dcp/__0_0.distcp is 100 bytes .*\(truncated\)"):
        verify_checkpoint(ckpt)


def test_flipped_byte_needs_hashes(tmp_path):
    """A flipped byte keeps the size, so the default sizes-only check passes; hashes=True catches it."""
    ckpt = save(tmp_path, 1)
    flip_byte(ckpt / "dcp" / "__0_0.distcp", 500)
    verify_checkpoint(ckpt)
    with pytest.raises(CheckpointInvalid, match=r"dcp/__0_0.distcp has SHA-256 .*\(corrupted\)"):
        verify_checkpoint(ckpt, hashes=True)


def test_missing_manifest_and_missing_file(tmp_path):
    first, second = save(tmp_path, 1), save(tmp_path, 2)
    (first / MANIFEST).unlink()
    with pytest.raises(CheckpointInvalid, match=f"no {MANIFEST}"):
        verify_checkpoint(first)
    (second / "train_state.json").unlink()
    with pytest.raises(CheckpointInvalid, match="missing file train_state.json") as err:
        verify_checkpoint(second)
    assert isinstance(err.value, KilnError) and err.value.path == second


def test_unreadable_manifest_and_escaping_paths(tmp_path):
    ckpt = save(tmp_path, 1)
    (ckpt / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointInvalid, match="unreadable"):
        verify_checkpoint(ckpt)
    (ckpt / MANIFEST).write_text(json.dumps({"format": 1, "files": {"../outside": {"size": 1, "sha256": ""}}}))
    with pytest.raises(CheckpointInvalid, match="outside the folder"):
        verify_checkpoint(ckpt)


def test_extra_files_are_allowed(tmp_path):
    ckpt = save(tmp_path, 1)
    (ckpt / "notes.txt").write_text("exported to HF on Tuesday")
    verify_checkpoint(ckpt, hashes=True)


def test_newest_valid_skips_a_corrupt_newest_with_a_warning(tmp_path):
    save(tmp_path, 100)
    save(tmp_path, 200)
    newest = save(tmp_path, 300)
    flip_byte(newest / "train_state.json", 0)
    warnings: list[str] = []
    assert newest_valid_checkpoint(tmp_path, list_steps, warn=warnings.append) == newest  # sizes only: passes
    found = newest_valid_checkpoint(tmp_path, list_steps, hashes=True, warn=warnings.append)
    assert found == tmp_path / "step000200"
    assert any(str(newest) in w and "corrupted" in w and "train_state.json" in w for w in warnings)


def test_newest_valid_skips_an_unfinished_checkpoint(tmp_path):
    save(tmp_path, 100)
    unfinished = tmp_path / "step000200"
    (unfinished / "dcp").mkdir(parents=True)
    warnings: list[str] = []
    assert newest_valid_checkpoint(tmp_path, list_steps, warn=warnings.append) == tmp_path / "step000100"
    assert str(unfinished) in warnings[0] and MANIFEST in warnings[0]


def test_none_valid_raises_unless_fresh_start_allowed(tmp_path):
    for step in (1, 2):
        (save(tmp_path, step) / MANIFEST).unlink()
    with pytest.raises(NoValidCheckpoint, match=r"none of the 2 checkpoints .* step000002 \(no MANIFEST"):
        newest_valid_checkpoint(tmp_path, list_steps, warn=lambda _: None)
    warnings: list[str] = []
    assert newest_valid_checkpoint(tmp_path, list_steps, warn=warnings.append, allow_fresh=True) is None
    assert "starting from scratch" in warnings[-1]
    assert newest_valid_checkpoint(tmp_path / "empty", list_steps) is None


def test_full_disk_while_writing_leaves_earlier_checkpoints_intact(tmp_path, monkeypatch):
    good = save(tmp_path, 1)

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(manifest, "atomic_write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save(tmp_path, 2)
    assert not (tmp_path / "step000002").exists()
    assert newest_valid_checkpoint(tmp_path, list_steps, hashes=True) == good


def test_full_tmpfs_leaves_earlier_checkpoints_intact(tmp_path):
    """A real full disk: a 1 MiB tmpfs (needs permission to mount; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or os.system(f"mount -t tmpfs -o size=1m tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        good = save(mount, 1, payload=b"x" * 300_000)
        with pytest.raises(OSError):
            save(mount, 2, payload=b"y" * 900_000)
        assert newest_valid_checkpoint(mount, list_steps, hashes=True) == good
        assert not (mount / "step000002").exists()
    finally:
        os.system(f"umount {mount}")


def test_write_manifest_replaces_an_old_one(tmp_path):
    ckpt = save(tmp_path, 1)
    (ckpt / "added.bin").write_bytes(b"late")
    write_manifest(ckpt)
    assert "added.bin" in json.loads((ckpt / MANIFEST).read_text())["files"]
    verify_checkpoint(ckpt, hashes=True)


def test_entries_hashed_per_rank_make_the_same_manifest(tmp_path):
    ckpt = save(tmp_path, 1)
    whole = json.loads((ckpt / MANIFEST).read_text())
    shard, state = ckpt / "dcp" / "__0_0.distcp", ckpt / "train_state.json"
    union = manifest.manifest_entries(ckpt, [shard]) | manifest.manifest_entries(ckpt, [state])
    write_manifest(ckpt, union)
    assert json.loads((ckpt / MANIFEST).read_text()) == whole
