"""Importers: every format, bad input, idempotency, crash resume."""
from __future__ import annotations

import json

import pytest

from database_tools import importers
from database_tools.errors import ImportFormatError
from database_tools.importers import import_file
from store_helpers import get_entry


def _texts(store, kind):
    return sorted(t for b in store.iter_entries(kinds=(kind,)) for _, _, t in b)


def test_concept_lines(store, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("# comment\nDog\n\n golden retriever \ndog\n")
    report = import_file(store, path, kind="concept")
    assert (report.records, report.added, report.bad) == (3, 2, 0)
    assert _texts(store, "concept") == ["dog", "golden retriever"]
    assert get_entry(store, "concept", "dog").support == 2


def test_conceptual_captions_tsv_with_and_without_header(store, tmp_path):
    plain = tmp_path / "cc.tsv"
    plain.write_text("a dog on a beach\thttp://x/1.jpg\na cat\thttp://x/2.jpg\n")
    headed = tmp_path / "cc2.tsv"
    headed.write_text("url\tcaption\nhttp://x/3.jpg\ta red car\nhttp://x/4\t\n")
    assert import_file(store, plain).added == 2
    report = import_file(store, headed)
    assert report.added == 1 and report.errors == [(3, "no text in column 1")]
    assert _texts(store, "caption") == ["a cat", "a dog on a beach", "a red car"]


def test_jsonl_field_and_malformed_lines(store, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"caption": "one"}\n{bad json\n{"text": "two"}\n[1]\n{"caption": "three"}\n')
    report = import_file(store, path)
    assert report.records == 3 and report.bad == 2
    assert [line for line, _ in report.errors] == [2, 4]
    custom = tmp_path / "d.jsonl"
    custom.write_text('{"sentence": "four", "caption": "no"}\n')
    import_file(store, custom, column="sentence")
    assert _texts(store, "caption") == ["four", "one", "three", "two"]


def test_coco_captions(store, tmp_path):
    path = tmp_path / "captions_val.json"
    data = {"images": [{"id": 1}], "annotations": [
        {"image_id": 1, "id": 1, "caption": "A man riding a horse."},
        {"image_id": 1, "id": 2}, {"image_id": 1, "id": 3, "caption": "a man riding a horse."}]}
    path.write_text(json.dumps(data))
    report = import_file(store, path)
    assert (report.records, report.added, report.bad) == (2, 1, 1)
    bad = tmp_path / "broken.json"
    bad.write_text('{"annotations": [{"caption": "x"}, ')
    with pytest.raises(ImportFormatError, match="not a valid COCO"):
        import_file(store, bad)


def test_parquet_by_batches(store, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"caption {i}" for i in range(50)] + [None]}), path,
                   row_group_size=7)
    report = import_file(store, path, chunk_size=8)
    assert (report.records, report.added, report.bad) == (50, 50, 1)
    with pytest.raises(ImportFormatError, match="no column"):
        import_file(store, path, column="nope")


def test_non_utf8_skip_or_replace(store, tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"good\nbad \xff\xfe line\nfine\n")
    report = import_file(store, path, kind="concept")
    assert report.bad == 1 and "not valid UTF-8" in report.errors[0][1]
    assert report.errors[0][0] == 2
    report = import_file(store, path, kind="concept", encoding_errors="replace")
    assert report.bad == 0 and get_entry(store, "concept", "bad \ufffd\ufffd line") is not None


def test_empty_and_unknown_inputs(store, tmp_path):
    empty = tmp_path / "e.txt"
    empty.write_text("")
    with pytest.raises(ImportFormatError, match="empty"):
        import_file(store, empty)
    comments = tmp_path / "c.txt"
    comments.write_text("# only\n\n")
    with pytest.raises(ImportFormatError, match="no records"):
        import_file(store, comments)
    with pytest.raises(ImportFormatError, match="--format"):
        import_file(store, tmp_path / "x.xyz" if (tmp_path / "x.xyz").write_text("a") else None)
    with pytest.raises(ImportFormatError, match="no such file"):
        import_file(store, tmp_path / "missing.txt")


def test_reimport_adds_nothing(store, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("dog\ncat\ndog\n")
    import_file(store, path, kind="concept")
    version = store.db_version()
    again = import_file(store, path, kind="concept")
    assert again.already_imported and again.added == 0
    assert get_entry(store, "concept", "dog").support == 2
    assert store.db_version() == version


def test_crash_mid_import_resumes_without_duplicates(store, tmp_path, monkeypatch):
    path = tmp_path / "c.txt"
    path.write_text("".join(f"concept {i % 30}\n" for i in range(100)))
    real = importers._commit_chunk
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(importers, "_commit_chunk", crashing)
    with pytest.raises(RuntimeError):
        import_file(store, path, kind="concept", chunk_size=20)
    assert sum(get_entry(store, "concept", f"concept {i}").support for i in range(30)) == 40
    monkeypatch.setattr(importers, "_commit_chunk", real)
    report = import_file(store, path, kind="concept", chunk_size=20)
    assert report.resumed_at == 40 and report.records == 60
    assert all(get_entry(store, "concept", f"concept {i}").support == (4 if i < 10 else 3)
               for i in range(30))
    assert import_file(store, path, kind="concept", chunk_size=20).already_imported


def test_same_file_imported_concurrently_counts_once(store, tmp_path):
    import threading

    from database_tools.store import Store

    path = tmp_path / "c.txt"
    path.write_text("".join(f"concept {i % 50}\n" for i in range(400)))
    errors = []

    def run():
        try:
            with Store(store.url) as s:
                import_file(s, path, kind="concept", chunk_size=25)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(get_entry(store, "concept", f"concept {i}").support == 8 for i in range(50))
