"""Streaming readers of caption/concept files: each yields ``Record``s with bounded memory.

A record carries either a text or the reason its line was rejected, so one bad line is
reported with its number and the import goes on.
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import ImportFormatError

logger = logging.getLogger(__name__)

FORMATS = ("txt", "tsv", "csv", "jsonl", "coco", "parquet")
_EXTENSIONS = {
    ".txt": "txt", ".lst": "txt", ".tsv": "tsv", ".csv": "csv", ".jsonl": "jsonl",
    ".ndjson": "jsonl", ".json": "coco", ".parquet": "parquet", ".pq": "parquet",
}
_TEXT_FIELDS = ("caption", "text")


@dataclass(frozen=True)
class Record:
    """One input record: ``text`` or ``error``, at 1-based ``line`` (or item number)."""

    line: int
    text: str | None = None
    error: str | None = None


def detect_format(path: Path) -> str:
    """Format from the file extension (``.gz`` etc. are not supported)."""
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ImportFormatError(
            f"{path}: cannot tell the format from extension {path.suffix!r}; "
            f"use --format ({', '.join(FORMATS)})"
        )
    return fmt


def _lines(path: Path, encoding_errors: str) -> Iterator[tuple[int, str | None, str | None]]:
    """``(line_no, text, error)`` per line; non-UTF-8 lines are errors or replaced."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n"), None
            except UnicodeDecodeError as exc:
                if encoding_errors == "replace":
                    yield number, raw.decode("utf-8", errors="replace").rstrip("\r\n"), None
                else:
                    yield number, None, f"not valid UTF-8 (byte {exc.start})"


def read_txt(path: Path, encoding_errors: str = "skip", **_: object) -> Iterator[Record]:
    """One text per line; blank lines and ``#`` comments are ignored."""
    for number, text, error in _lines(path, encoding_errors):
        if error:
            yield Record(number, error=error)
        elif text.strip() and not text.lstrip().startswith("#"):
            yield Record(number, text=text)


def read_delimited(
    path: Path, delimiter: str, column: str | None = None, encoding_errors: str = "skip", **_: object
) -> Iterator[Record]:
    """CSV/TSV (Conceptual Captions: ``caption<TAB>url``), header optional.

    A first row whose cells include ``caption``/``text`` (or ``column``) is a header.
    ``column`` is a header name or a 0-based index; the default is the caption column or 0.
    """
    index: int | None = int(column) if column is not None and column.isdigit() else None
    for number, text, error in _lines(path, encoding_errors):
        if error:
            yield Record(number, error=error)
            continue
        if not text.strip():
            continue
        try:
            cells = next(csv.reader(io.StringIO(text), delimiter=delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            yield Record(number, error=f"malformed row: {exc}")
            continue
        if index is None:  # decided on the first row: a header, or data in column 0
            lowered = [c.strip().lower() for c in cells]
            wanted = [column.lower()] if column else list(_TEXT_FIELDS)
            hit = next((lowered.index(w) for w in wanted if w in lowered), None)
            if hit is not None:
                index = hit
                continue
            if column:
                raise ImportFormatError(f"{path}: no column named {column!r} in the header")
            index = 0
        if index >= len(cells) or not cells[index].strip():
            yield Record(number, error=f"no text in column {index}")
        else:
            yield Record(number, text=cells[index])


def _pick_field(obj: dict, field: str | None) -> object:
    if field:
        return obj.get(field)
    return next((obj[f] for f in _TEXT_FIELDS if f in obj), None)


def read_jsonl(
    path: Path, field: str | None = None, encoding_errors: str = "skip", **_: object
) -> Iterator[Record]:
    """One JSON object per line; the text is ``field`` (default ``caption`` or ``text``)."""
    for number, text, error in _lines(path, encoding_errors):
        if error:
            yield Record(number, error=error)
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(number, error=f"invalid JSON: {exc.msg}")
            continue
        value = _pick_field(obj, field) if isinstance(obj, dict) else None
        if not isinstance(value, str) or not value.strip():
            yield Record(number, error=f"no string field {field or '/'.join(_TEXT_FIELDS)!r}")
        else:
            yield Record(number, text=value)


def read_coco(path: Path, field: str | None = None, **_: object) -> Iterator[Record]:
    """COCO captions JSON (``annotations[].caption``), streamed with ijson."""
    import ijson

    key = field or "caption"
    with open(path, "rb") as handle:
        try:
            for number, item in enumerate(ijson.items(handle, "annotations.item"), start=1):
                value = item.get(key) if isinstance(item, dict) else None
                if not isinstance(value, str) or not value.strip():
                    yield Record(number, error=f"annotation has no string {key!r}")
                else:
                    yield Record(number, text=value)
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise ImportFormatError(f"{path}: not a valid COCO captions JSON: {exc}") from None


def read_parquet(
    path: Path, column: str | None = None, batch_size: int = 8192, **_: object
) -> Iterator[Record]:
    """Parquet read by record batches; ``column`` defaults to ``caption`` or ``text``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportFormatError(f"{path}: not a readable Parquet file: {exc}") from None
    names = parquet.schema_arrow.names
    name = column or next((f for f in _TEXT_FIELDS if f in names), None)
    if name not in names:
        raise ImportFormatError(f"{path}: no column {column or 'caption/text'!r} (has {names})")
    number = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=[name]):
        for value in batch.column(0).to_pylist():
            number += 1
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            if not isinstance(value, str) or not value.strip():
                yield Record(number, error="empty or non-text value")
            else:
                yield Record(number, text=value)


def read_records(path: Path, fmt: str, **options: object) -> Iterator[Record]:
    """Records of ``path`` in format ``fmt`` (see :data:`FORMATS`)."""
    if fmt == "txt":
        return read_txt(path, **options)
    if fmt in ("tsv", "csv"):
        return read_delimited(path, "\t" if fmt == "tsv" else ",", **options)
    if fmt == "jsonl":
        return read_jsonl(path, **options)
    if fmt == "coco":
        return read_coco(path, **options)
    if fmt == "parquet":
        return read_parquet(path, **options)
    raise ImportFormatError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
