from __future__ import annotations

import pytest

from kiln.data.sources import SkipReport, read_documents, resolve_inputs
from kiln.errors import KilnError


def test_folders_expand_recursively_in_sorted_order_and_count_ignored_files(corpus_dir):
    report = SkipReport()
    files = resolve_inputs([corpus_dir], report)
    names = [f.name for f in files]
    assert names == ["a_poem.txt", "b_notes.md", "c_docs.jsonl", "d_docs.jsonl.gz", "e_docs.json.gz",
                     "f_docs.jsonl.zst"]
    assert report.counts == {"ignored_file": 1}


def test_every_format_yields_its_documents(corpus_dir):
    files = resolve_inputs([corpus_dir], SkipReport())
    counts = [len(list(read_documents(f))) for f in files]
    assert counts == [1, 1, 6, 3, 2, 2]
    zst = files[-1]
    assert next(read_documents(zst, text_field="body")).startswith("Zstd document 0 keeps")
    assert "東京" in next(read_documents(files[0]))


def test_bad_jsonl_lines_are_counted_with_line_numbers(bad_dir):
    report = SkipReport()
    docs = list(read_documents(bad_dir / "mixed.jsonl", report=report))
    assert docs == ["A good first line.", "Latin-1 bytes: caf\ufffd au lait", "A good last line."]
    where = str(bad_dir / "mixed.jsonl")
    assert report.examples["invalid_json"] == [f"{where}:2"]
    assert report.examples["missing_text_field"] == [f"{where}:3"]
    assert report.examples["text_field_not_a_string"] == [f"{where}:4"]
    assert report.examples["invalid_utf8_replaced"] == [f"{where}:5"]
    assert report.examples["empty_document"] == [f"{where}:6"]
    assert any(line.startswith("invalid_json: 1 (") for line in report.lines())


def test_utf8_skip_policy_drops_and_counts(bad_dir):
    report = SkipReport()
    docs = list(read_documents(bad_dir / "mixed.jsonl", utf8_errors="skip", report=report))
    assert len(docs) == 2 and report.counts["invalid_utf8_skipped"] == 1
    assert list(read_documents(bad_dir / "latin1.txt", utf8_errors="skip", report=report)) == []
    assert report.counts["invalid_utf8_skipped"] == 2
    with pytest.raises(KilnError, match="not one of replace, skip"):
        list(read_documents(bad_dir / "latin1.txt", utf8_errors="ignore"))


def test_missing_unsupported_and_empty_inputs_fail_up_front(tmp_path, corpus_dir):
    with pytest.raises(KilnError, match="input not found: .*missing.jsonl"):
        resolve_inputs([corpus_dir, tmp_path / "missing.jsonl"], SkipReport())
    with pytest.raises(KilnError, match="unsupported input file .*README.csv"):
        resolve_inputs([corpus_dir / "README.csv"], SkipReport())
    with pytest.raises(KilnError, match="holds no input files"):
        resolve_inputs([tmp_path], SkipReport())


def test_truncated_archive_names_the_file(bad_dir):
    with pytest.raises(KilnError, match="cannot read .*truncated.jsonl.gz"):
        list(read_documents(bad_dir / "truncated.jsonl.gz"))
