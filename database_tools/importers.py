"""Import caption/concept files into the store: streamed, chunked, resumable, idempotent.

Each file is keyed by the sha256 of its bytes and import options. Every chunk is one
transaction that also records how many records of the file are done, so a crash loses at
most the current chunk, a re-run resumes after the last committed one, and re-importing a
finished file adds nothing (support counts are never incremented twice).
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from sqlalchemy import select
from tqdm.auto import tqdm

from .errors import ImportFormatError
from .normalize import KINDS, count_texts
from .readers import FORMATS, Record, detect_format, read_records
from .schema import ImportSource, utcnow
from .sql import entry_ids, insert_for, upsert_entries
from .store import Store

logger = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100


@dataclass
class ImportReport:
    """What an import did; ``errors`` lists the first bad lines as ``(line, reason)``."""

    path: str
    format: str
    kind: str
    source: str
    records: int = 0
    added: int = 0
    bad: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    already_imported: bool = False
    resumed_at: int = 0

    def summary(self) -> str:
        """One human line for the CLI."""
        if self.already_imported:
            return f"{self.path}: already imported (checksum match), nothing added"
        text = (
            f"{self.path}: {self.records} {self.kind} records read, {self.added} new entries, "
            f"{self.bad} bad lines skipped"
        )
        return text + (f" (resumed after record {self.resumed_at})" if self.resumed_at else "")


def file_checksum(path: Path, options: str) -> str:
    """sha256 of the file bytes and the import options (so another column is another import)."""
    digest = hashlib.sha256(options.encode("utf-8") + b"\0")
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_row(store: Store, checksum: str, kind: str, name: str) -> tuple[int, int, bool]:
    """Create (or find) the import record: ``(id, records_done, completed)``."""
    with store.write() as txn:
        stmt = insert_for(txn.session, ImportSource).values(
            checksum=checksum, kind=kind, name=name, records_done=0, completed=False,
            created_at=utcnow(),
        )
        txn.session.execute(stmt.on_conflict_do_nothing(index_elements=["checksum", "kind"]))
        row = txn.session.execute(
            select(ImportSource.id, ImportSource.records_done, ImportSource.completed).where(
                ImportSource.checksum == checksum, ImportSource.kind == kind
            )
        ).one()
    return int(row[0]), int(row[1]), bool(row[2])


def _commit_chunk(
    store: Store, source_id: int, start: int, chunk: list[Record], kind: str, source: str,
    status: str,
) -> tuple[int, int]:
    """Apply one chunk (records ``start..``) atomically; returns ``(texts taken, new entries)``."""
    with store.write() as txn:
        src = txn.session.scalar(
            select(ImportSource).where(ImportSource.id == source_id).with_for_update()
        )
        skip = max(0, src.records_done - start)  # a concurrent run of the same file got here
        rows = count_texts((record.text for record in chunk[skip:]), kind)
        existing = entry_ids(txn.session, kind, list(rows))
        upsert_entries(txn, kind, rows, source=source, status=status)
        src.records_done = max(src.records_done, start + len(chunk))
    return sum(c for _, c in rows.values()), len(rows) - len(existing)


def _batched(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while chunk := list(islice(records, size)):
        yield chunk


def import_file(
    store: Store,
    path: str | Path,
    *,
    kind: str = "caption",
    fmt: str | None = None,
    source: str | None = None,
    column: str | None = None,
    encoding_errors: str = "skip",
    status: str = "active",
    chunk_size: int = 5000,
    progress: bool = False,
) -> ImportReport:
    """Import ``path`` as entries of ``kind``; see the module docstring for the guarantees.

    :param fmt: one of ``txt, tsv, csv, jsonl, coco, parquet``; default from the extension.
    :param column: CSV/TSV/Parquet column (name or index) or JSONL/COCO field.
    :param encoding_errors: ``skip`` (report non-UTF-8 lines) or ``replace`` (U+FFFD).
    """
    path = Path(path)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if encoding_errors not in ("skip", "replace"):
        raise ValueError("encoding_errors must be 'skip' or 'replace'")
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    if not path.is_file():
        raise ImportFormatError(f"{path}: no such file")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ImportFormatError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if path.stat().st_size == 0:
        raise ImportFormatError(f"{path}: the file is empty")
    source = source or f"file:{path.name}"
    report = ImportReport(str(path), fmt, kind, source)
    checksum = file_checksum(path, f"{fmt}|{column}|{encoding_errors}")
    source_id, done, completed = _source_row(store, checksum, kind, str(path))
    if completed:
        report.already_imported = True
        return report
    report.resumed_at = done
    _run_chunks(store, path, fmt, column, encoding_errors, source_id, done, chunk_size,
                status, progress, report)
    return report


def _run_chunks(
    store: Store, path: Path, fmt: str, column: str | None, encoding_errors: str,
    source_id: int, done: int, chunk_size: int, status: str, progress: bool,
    report: ImportReport,
) -> None:
    """Stream the records, skip the ``done`` ones, commit chunk by chunk, then mark complete."""
    records = read_records(path, fmt, column=column, field=column, encoding_errors=encoding_errors)
    position = 0
    with tqdm(desc=f"import {path.name}", unit="rec", disable=not progress) as bar:
        for chunk in _batched(records, chunk_size):
            for record in chunk:
                if record.error:
                    report.bad += 1
                    if len(report.errors) < MAX_REPORTED_ERRORS:
                        report.errors.append((record.line, record.error))
            start, position = position, position + len(chunk)
            bar.update(len(chunk))
            if position <= done:
                continue
            resume = chunk[max(0, done - start):]
            taken, added = _commit_chunk(
                store, source_id, max(start, done), resume, report.kind, report.source, status
            )
            report.records += taken
            report.added += added
    if position == 0 and report.bad == 0:
        raise ImportFormatError(f"{path}: no records found (empty file or only comments)")
    with store.write() as txn:
        src = txn.session.get(ImportSource, source_id)
        src.completed = True
        src.records_done = max(src.records_done, position)
    for line, error in report.errors[:10]:
        logger.warning("%s:%d: %s", path, line, error)
