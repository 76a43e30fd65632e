"""Row files of an export bundle: JSONL or Parquet, written and read in batches."""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import BundleError

BATCH = 5000
TABLES = ("entries", "aliases", "exemplars")
_BINARY = {"vector"}


def _schema(table: str) -> Any:
    import pyarrow as pa

    fields = {
        "entries": [("id", pa.int64()), ("kind", pa.string()), ("text", pa.string()),
                    ("norm", pa.string()), ("status", pa.string()), ("support", pa.int64()),
                    ("source", pa.string()), ("merged_into_id", pa.int64()),
                    ("created_at", pa.string()), ("updated_at", pa.string())],
        "aliases": [("text", pa.string()), ("norm", pa.string()), ("entry_id", pa.int64()),
                    ("count", pa.int64())],
        "exemplars": [("encoder_id", pa.string()), ("entry_id", pa.int64()), ("dim", pa.int64()),
                      ("vector", pa.binary()), ("provenance", pa.string()),
                      ("created_at", pa.string())],
    }[table]
    return pa.schema(fields)


def to_jsonable(value: Any) -> Any:
    """Timestamps as ISO text, everything else unchanged."""
    return value.isoformat() if isinstance(value, datetime) else value


def write_rows(path: Path, fmt: str, table: str, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` to ``path``; returns the row count."""
    count = 0
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                out = {k: (base64.b64encode(v).decode("ascii") if k in _BINARY else to_jsonable(v))
                       for k, v in row.items()}
                handle.write(json.dumps(out, ensure_ascii=False, sort_keys=True) + "\n")
                count += 1
        return count
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(table)
    with pq.ParquetWriter(path, schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append({k: to_jsonable(v) for k, v in row.items()})
            count += 1
            if len(batch) >= BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    return count


def read_rows(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    """Rows of a bundle file; any parse failure is a :class:`BundleError`."""
    try:
        if fmt == "jsonl":
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    if "vector" in row:
                        row["vector"] = base64.b64decode(row["vector"], validate=True)
                    yield row
            return
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            yield from batch.to_pylist()
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure means a corrupt file
        raise BundleError(f"{path.name}: corrupt bundle file: {exc}") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
