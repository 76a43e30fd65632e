"""On-disk layout of concept index versions: manifest, atomic writes, CURRENT pointer, metadata.

Layout (one directory per encoder, so indexes of different encoders never mix)::

    index_dir/<encoder-safe-name>/
        CURRENT                 name of the serving version (written temp + fsync + os.replace)
        .lock                   filelock held by builders (build, update, bootstrap)
        versions/<version>/
            index.faiss         the faiss index (read memory-mapped, read-only)
            entries.arrow       Arrow IPC file: entry_id (sorted), kind, text — hits need no SQL
            excluded.npy        optional: ids filtered at query time (index without remove_ids)
            manifest.json       :class:`IndexManifest`, written last

A version directory is assembled under ``versions/.tmp-<version>`` and renamed into place only
when complete, then ``CURRENT`` is switched atomically: a build killed at any point leaves the
previous version serving.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from .errors import IndexCorrupt, IndexNotFound

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
INDEX_FILE = "index.faiss"
ENTRIES_FILE = "entries.arrow"
EXCLUDED_FILE = "excluded.npy"
MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
KEEP_VERSIONS = 3
ENTRY_SCHEMA = pa.schema(
    [
        ("entry_id", pa.int64()),
        ("kind", pa.dictionary(pa.int8(), pa.string())),
        ("text", pa.string()),
    ]
)


@dataclass
class IndexManifest:
    """Everything needed to check an index before use and to rebuild it identically."""

    version: str
    encoder_id: str
    dim: int
    count: int
    factory: str
    snapshot_hash: str
    db_version: int
    index_sha256: str
    index_bytes: int
    entries_sha256: str
    metric: str = "inner_product"
    normalised: bool = True
    search_params: dict[str, int] = field(default_factory=dict)
    recall_at_10: float | None = None
    excluded: int = 0
    parent_version: str | None = None
    created_at: str = ""
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> IndexManifest:
        """Parse ``manifest.json``; unreadable or incomplete -> :class:`IndexCorrupt`."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise IndexCorrupt(f"index manifest {path} is unreadable: {exc}") from None


def encoder_dirname(encoder_id: str) -> str:
    """Filesystem-safe, collision-free directory name of an encoder id."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", encoder_id).strip("._")[:80] or "encoder"
    return f"{safe}-{hashlib.sha256(encoder_id.encode('utf-8')).hexdigest()[:8]}"


def encoder_root(index_dir: str | Path, encoder_id: str) -> Path:
    return Path(index_dir) / encoder_dirname(encoder_id)


def new_version_name() -> str:
    """Sortable, unique version id: UTC timestamp + random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (directories: so a rename survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + fsync + ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def staging_dir(root: Path, version: str) -> Path:
    """Fresh temp directory for a version being assembled."""
    path = root / "versions" / f".tmp-{version}"
    path.mkdir(parents=True, exist_ok=False)
    return path


def clean_stale_staging(root: Path) -> None:
    """Remove ``.tmp-*`` leftovers of killed builds (call with the build lock held)."""
    for path in (root / "versions").glob(".tmp-*"):
        logger.info("removing unfinished index build %s", path)
        shutil.rmtree(path, ignore_errors=True)


def publish_version(root: Path, staging: Path, manifest: IndexManifest) -> Path:
    """Write the manifest, fsync, rename the staging dir into place and switch ``CURRENT``."""
    write_text_atomic(staging / MANIFEST_FILE, manifest.to_json())
    for child in staging.iterdir():
        fsync_path(child)
    final = root / "versions" / manifest.version
    os.replace(staging, final)
    fsync_path(final.parent)
    write_text_atomic(root / CURRENT_FILE, manifest.version + "\n")
    return final


def current_version_dir(root: Path) -> Path:
    """Directory of the serving version; :class:`IndexNotFound` when none was published."""
    pointer = root / CURRENT_FILE
    if not pointer.is_file():
        raise IndexNotFound(f"no concept index at {root} (no {CURRENT_FILE} file)")
    version = pointer.read_text(encoding="utf-8").strip()
    path = root / "versions" / version
    if not version or not path.is_dir():
        raise IndexCorrupt(f"{pointer} names version {version!r}, which does not exist")
    return path


def prune_versions(root: Path, keep: int = KEEP_VERSIONS) -> list[str]:
    """Delete all but the newest ``keep`` versions (never the current one); return removed."""
    current = (root / CURRENT_FILE).read_text(encoding="utf-8").strip()
    versions = sorted(p.name for p in (root / "versions").iterdir()
                      if p.is_dir() and not p.name.startswith("."))
    removed = [v for v in versions[:-keep] if v != current] if keep > 0 else []
    for name in removed:
        shutil.rmtree(root / "versions" / name, ignore_errors=True)
    return removed


def list_versions(root: Path) -> list[str]:
    """Published version names, oldest first."""
    folder = root / "versions"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class EntryWriter:
    """Streams ``(entry_id, kind, text)`` rows into ``entries.arrow`` (ids must ascend)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sink = ipc.new_file(str(path), ENTRY_SCHEMA)
        self._last = -1
        self.count = 0

    def write(self, ids: np.ndarray, kinds: list[str], texts: list[str]) -> None:
        if len(ids) == 0:
            return
        if ids[0] <= self._last or np.any(np.diff(ids) <= 0):
            raise ValueError("entry ids must be strictly increasing across the metadata file")
        self._last = int(ids[-1])
        batch = pa.record_batch(
            [pa.array(ids, pa.int64()), pa.array(kinds).dictionary_encode().cast(
                ENTRY_SCHEMA.field("kind").type), pa.array(texts, pa.string())],
            schema=ENTRY_SCHEMA,
        )
        self._sink.write_batch(batch)
        self.count += len(ids)

    def close(self) -> None:
        self._sink.close()


def read_entries(path: Path) -> pa.Table:
    """Memory-mapped ``entries.arrow`` table (zero-copy)."""
    try:
        with pa.memory_map(str(path), "r") as source:
            return ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise IndexCorrupt(f"index metadata {path} is unreadable: {exc}") from None


def sort_entries(table: pa.Table) -> pa.Table:
    """Entries table sorted by id (the order :class:`~database_tools.index.ConceptIndex`
    binary-searches)."""
    return table.take(pc.sort_indices(table, sort_keys=[("entry_id", "ascending")]))


def write_entries_table(path: Path, table: pa.Table) -> None:
    """Write a whole (sorted) entries table."""
    with ipc.new_file(str(path), ENTRY_SCHEMA) as sink:
        sink.write_table(table.cast(ENTRY_SCHEMA), max_chunksize=1 << 16)


def save_excluded(path: Path, ids: np.ndarray) -> None:
    np.save(path, np.unique(np.asarray(ids, dtype=np.int64)), allow_pickle=False)


def load_excluded(path: Path) -> np.ndarray:
    if not path.is_file():
        return np.zeros(0, dtype=np.int64)
    try:
        return np.load(path, allow_pickle=False).astype(np.int64, copy=False)
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"index exclusion list {path} is unreadable: {exc}") from None


def manifest_summary(manifest: IndexManifest) -> dict[str, Any]:
    """The manifest fields the store records in ``index_versions``."""
    return asdict(manifest)
