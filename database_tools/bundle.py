"""Export the store to a portable bundle directory and merge a bundle into any store.

A bundle is a directory: ``entries``, ``aliases`` and ``exemplars`` files (JSONL or Parquet)
plus ``manifest.json`` (schema version, encoder ids, counts, sha256 of every file). Export
writes into a temporary sibling directory and renames it into place; import verifies every
checksum before touching the store and merges in one transaction, so a bad bundle leaves
the store untouched and importing the same bundle twice adds nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .bundle_io import TABLES, read_rows, sha256_file, write_rows
from .errors import BundleError
from .migrate import head_revision, known_revisions
from .schema import Alias, Entry, Exemplar, ImportSource, utcnow
from .sql import insert_for
from .store import Store
from .txn import Txn

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "tag-db-bundle"
BUNDLE_VERSION = 1
_EXT = {"jsonl": "jsonl", "parquet": "parquet"}


@dataclass
class BundleReport:
    """Counts of an export or import."""

    path: str
    entries: int = 0
    aliases: int = 0
    exemplars: int = 0
    already_imported: bool = False

    def summary(self) -> str:
        if self.already_imported:
            return f"{self.path}: bundle already imported, nothing added"
        return (f"{self.path}: {self.entries} entries, {self.aliases} aliases, "
                f"{self.exemplars} exemplars")


def _iter(store: Store, query: Any) -> Iterator[Any]:
    with store.read() as session:
        yield from session.execute(query.execution_options(yield_per=2000))


def _entry_rows(store: Store) -> Iterator[dict[str, Any]]:
    cols = ("id", "kind", "text", "norm", "status", "support", "source", "merged_into_id",
            "created_at", "updated_at")
    for row in _iter(store, select(*(getattr(Entry, c) for c in cols)).order_by(Entry.id)):
        yield dict(zip(cols, row))


def _alias_rows(store: Store) -> Iterator[dict[str, Any]]:
    cols = ("text", "norm", "entry_id", "count")
    for row in _iter(store, select(*(getattr(Alias, c) for c in cols)).order_by(Alias.id)):
        yield dict(zip(cols, row))


def _exemplar_rows(store: Store) -> Iterator[dict[str, Any]]:
    cols = ("encoder_id", "entry_id", "dim", "vector", "provenance", "created_at")
    for row in _iter(store, select(*(getattr(Exemplar, c) for c in cols)).order_by(Exemplar.id)):
        yield dict(zip(cols, row))


def export_bundle(
    store: Store, bundle: str | Path, *, fmt: str = "parquet", index_dir: str | Path | None = None
) -> BundleReport:
    """Write the whole store (and optionally the index directory) to ``bundle``.

    :param fmt: ``parquet`` (compact, typed) or ``jsonl`` (readable).
    :param index_dir: when given, its contents are copied to ``bundle/index``.
    """
    if fmt not in _EXT:
        raise ValueError("format must be 'parquet' or 'jsonl'")
    bundle = Path(bundle)
    if bundle.exists():
        raise BundleError(f"{bundle} already exists; choose a new bundle path")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=bundle.parent))
    try:
        report = _write_bundle(store, tmp, fmt, index_dir, str(bundle))
        os.replace(tmp, bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _write_bundle(
    store: Store, tmp: Path, fmt: str, index_dir: str | Path | None, name: str
) -> BundleReport:
    version = store.db_version()
    counts, files = {}, {}
    for table, rows in (("entries", _entry_rows(store)), ("aliases", _alias_rows(store)),
                        ("exemplars", _exemplar_rows(store))):
        filename = f"{table}.{_EXT[fmt]}"
        counts[table] = write_rows(tmp / filename, fmt, table, rows)
        files[table] = {"name": filename, "sha256": sha256_file(tmp / filename),
                        "bytes": (tmp / filename).stat().st_size}
    if index_dir is not None:
        if not Path(index_dir).is_dir():
            raise BundleError(f"index directory {index_dir} does not exist (build-index first)")
        shutil.copytree(index_dir, tmp / "index", symlinks=True)
    with store.read() as session:
        encoders = sorted(set(session.scalars(select(Exemplar.encoder_id).distinct())))
    manifest = {
        "format": BUNDLE_FORMAT, "bundle_version": BUNDLE_VERSION,
        "schema_version": head_revision(), "file_format": fmt, "db_version": version,
        "created_at": utcnow().isoformat(), "exemplar_encoder_ids": encoders,
        "counts": counts, "files": files, "with_index": index_dir is not None,
    }
    with open(tmp / "manifest.json", "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return BundleReport(name, counts["entries"], counts["aliases"], counts["exemplars"])


def read_manifest(bundle: Path) -> dict[str, Any]:
    """Load and check ``manifest.json`` and every file checksum (no store access)."""
    path = bundle / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{bundle}: not a bundle (no manifest.json)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{bundle}: corrupt manifest.json: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle}: manifest.json is not a {BUNDLE_FORMAT} manifest")
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(f"{bundle}: unsupported bundle version {manifest.get('bundle_version')}")
    schema = manifest.get("schema_version")
    if schema not in known_revisions():
        raise BundleError(
            f"{bundle}: unknown schema version {schema!r} (this code knows up to "
            f"{head_revision()!r}); upgrade tag-backend to import it"
        )
    if manifest.get("file_format") not in _EXT:
        raise BundleError(f"{bundle}: unknown file format {manifest.get('file_format')!r}")
    for table in TABLES:
        info = (manifest.get("files") or {}).get(table)
        if not isinstance(info, dict) or not (bundle / str(info.get("name"))).is_file():
            raise BundleError(f"{bundle}: missing {table} file")
        actual = sha256_file(bundle / info["name"])
        if actual != info.get("sha256"):
            raise BundleError(
                f"{bundle}: checksum mismatch for {info['name']} (truncated or modified)"
            )
    return manifest


def import_bundle(store: Store, bundle: str | Path) -> BundleReport:
    """Merge a bundle into ``store`` in one transaction (all or nothing, once per bundle)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    fmt = manifest["file_format"]
    key = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    report = BundleReport(str(bundle))
    with store.write() as txn:
        if txn.session.scalar(select(ImportSource.id).where(
                ImportSource.checksum == key, ImportSource.kind == "bundle")) is not None:
            report.already_imported = True
            return report
        files = {t: bundle / manifest["files"][t]["name"] for t in TABLES}
        id_map = _merge_entries(txn, read_rows(files["entries"], fmt), report)
        _merge_aliases(txn, read_rows(files["aliases"], fmt), id_map, report)
        _merge_exemplars(txn, read_rows(files["exemplars"], fmt), id_map, report)
        for table in TABLES:
            if getattr(report, table) != manifest["counts"].get(table):
                raise BundleError(f"{bundle}: {table} row count differs from the manifest")
        txn.session.add(ImportSource(checksum=key, kind="bundle", name=str(bundle),
                                     records_done=report.entries, completed=True,
                                     created_at=utcnow()))
    return report


def _ts(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else utcnow()


def _merge_entries(txn: Txn, rows: Iterator[dict[str, Any]], report: BundleReport) -> dict:
    """Upsert entries by (kind, norm), summing support; returns bundle id -> store id."""
    seq, session = txn.seq(), txn.session
    id_map: dict[int, int] = {}
    merged_links: list[tuple[int, int]] = []
    for row in rows:
        stmt = insert_for(session, Entry).values(
            kind=row["kind"], text=row["text"], norm=row["norm"], status=row["status"],
            support=int(row["support"]), source=row["source"], created_at=_ts(row["created_at"]),
            updated_at=_ts(row["updated_at"]), updated_seq=seq,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind", "norm"],
            set_={"support": Entry.support + stmt.excluded.support},
        )
        session.execute(stmt)
        id_map[int(row["id"])] = int(session.scalar(select(Entry.id).where(
            Entry.kind == row["kind"], Entry.norm == row["norm"])))
        if row.get("merged_into_id") is not None:
            merged_links.append((int(row["id"]), int(row["merged_into_id"])))
        report.entries += 1
    for source, target in merged_links:
        if target not in id_map:
            raise BundleError(f"entry {source} is merged into unknown entry {target}")
        entry = session.get(Entry, id_map[source])
        if entry.merged_into_id is None and entry.status == "merged":
            entry.merged_into_id = id_map[target]
    return id_map


def _merge_aliases(txn: Txn, rows: Iterator[dict], id_map: dict, report: BundleReport) -> None:
    for row in rows:
        if int(row["entry_id"]) not in id_map:
            raise BundleError(f"alias {row['text']!r} points to unknown entry {row['entry_id']}")
        stmt = insert_for(txn.session, Alias).values(
            text=row["text"], norm=row["norm"], entry_id=id_map[int(row["entry_id"])],
            count=int(row["count"]), updated_at=utcnow(),
        )
        txn.session.execute(stmt.on_conflict_do_update(
            index_elements=["norm", "entry_id"], set_={"count": Alias.count + stmt.excluded.count}
        ))
        report.aliases += 1


def _merge_exemplars(txn: Txn, rows: Iterator[dict], id_map: dict, report: BundleReport) -> None:
    """Add exemplars, skipping ones the store already has (same encoder, concept, vector)."""
    seen: dict[tuple[str, int], set[bytes]] = {}
    for row in rows:
        if int(row["entry_id"]) not in id_map:
            raise BundleError(f"exemplar points to unknown entry {row['entry_id']}")
        entry_id, vector = id_map[int(row["entry_id"])], bytes(row["vector"])
        if len(vector) != 4 * int(row["dim"]):
            raise BundleError("exemplar vector length does not match its dim")
        key = (row["encoder_id"], entry_id)
        if key not in seen:
            seen[key] = set(txn.session.scalars(select(Exemplar.vector).where(
                Exemplar.encoder_id == key[0], Exemplar.entry_id == entry_id)))
        report.exemplars += 1
        if vector in seen[key]:
            continue
        seen[key].add(vector)
        txn.session.add(Exemplar(
            encoder_id=row["encoder_id"], entry_id=entry_id, dim=int(row["dim"]), vector=vector,
            provenance=row["provenance"], created_at=_ts(row["created_at"]),
        ))
