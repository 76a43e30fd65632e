"""Base indexes shared between processes: published as immutable versions, pulled to local disk.

Several backend replicas and job workers need the same concept index. Each one building and
rewriting its own directory wastes minutes per replica, and serving one directory over NFS
breaks the guarantee the local layout relies on (a replaced version's memory-mapped files stay
alive until unmapped — not true for files deleted on another NFS client). So:

* **publish**: a finished local version (``index_dir/<encoder>/versions/<v>``) is copied to the
  shared directory ``TAG_INDEX_STORE`` as ``<store>/<encoder>/versions/<v>/`` together with
  ``files.json`` (name, size and sha256 of every file). The copy is assembled under a temp name
  and renamed into place, so a version is either complete or absent, and never rewritten:
  publishing an existing version only checks it is identical. ``<store>/<encoder>/LATEST``
  names the newest version (versions are named by UTC time, so names sort by age).
* **pull**: a process copies the version it needs into its own ``index_dir`` (local disk),
  verifies every file's size and sha256 against ``files.json`` before the version is renamed
  into place, switches its local ``CURRENT`` and only then memory-maps it. A version already
  present locally is only re-verified.

:func:`ensure_shared_index` is :func:`~database_tools.bootstrap.ensure_index` with both steps:
pull the latest published version, build or update locally only if the database has changed
since it was built, and publish what was built.

Only shared *directories* are supported (a network filesystem mounted by every node). Object
storage (``s3://`` through fsspec) is not implemented: there is no S3-compatible server in the
test environment to check it against.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DatabaseToolsError, IndexCorrupt, IndexNotFound
from .index_files import (
    CURRENT_FILE,
    MANIFEST_FILE,
    current_version_dir,
    encoder_root,
    file_sha256,
    fsync_path,
    prune_versions,
    write_text_atomic,
)

if TYPE_CHECKING:
    from .embedding import TextEncoder
    from .index import ConceptIndex
    from .store import Store

logger = logging.getLogger(__name__)

FILES_LIST = "files.json"
LATEST_FILE = "LATEST"


class IndexStoreError(DatabaseToolsError):
    """The shared index store is unusable (missing, unwritable, or a version differs)."""


@dataclass(frozen=True)
class PublishedVersion:
    encoder_id: str
    version: str
    path: Path
    files: dict[str, dict]  # name -> {"bytes": int, "sha256": str}


def _store_root(store_dir: str | Path, encoder_id: str) -> Path:
    root = Path(store_dir)
    if not root.is_dir():
        raise IndexStoreError(f"index store {root} is not a directory (TAG_INDEX_STORE)")
    return encoder_root(root, encoder_id)


def _describe(directory: Path) -> dict[str, dict]:
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != FILES_LIST}


def _verify(directory: Path, files: dict[str, dict]) -> None:
    """Every listed file present with its size and sha256; :class:`IndexCorrupt` otherwise."""
    for name, meta in files.items():
        path = directory / name
        if not path.is_file():
            raise IndexCorrupt(f"{path} is missing")
        if path.stat().st_size != meta["bytes"]:
            raise IndexCorrupt(f"{path} has {path.stat().st_size} bytes, expected {meta['bytes']}")
        if file_sha256(path) != meta["sha256"]:
            raise IndexCorrupt(f"{path} does not match its sha256 (altered or truncated copy)")


def _read_files(directory: Path) -> dict[str, dict]:
    try:
        files = json.loads((directory / FILES_LIST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IndexCorrupt(f"{directory / FILES_LIST} is unreadable: {exc}") from None
    if not isinstance(files, dict) or MANIFEST_FILE not in files:
        raise IndexCorrupt(f"{directory / FILES_LIST} does not list {MANIFEST_FILE}")
    return files


def _copy_dir(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for path in sorted(source.iterdir()):
        if path.is_file():
            shutil.copyfile(path, target / path.name)
            fsync_path(target / path.name)


def publish(index_dir: str | Path, encoder_id: str, store_dir: str | Path,
            version: str | None = None) -> PublishedVersion:
    """Publish a local version (default: the local ``CURRENT``) to the shared store."""
    local_root = encoder_root(index_dir, encoder_id)
    source = current_version_dir(local_root) if version is None else \
        local_root / "versions" / version
    if not (source / MANIFEST_FILE).is_file():
        raise IndexNotFound(f"no complete index version at {source}")
    version = source.name
    files = _describe(source)
    root = _store_root(store_dir, encoder_id)
    final = root / "versions" / version
    if not final.is_dir():
        tmp = root / "versions" / f".tmp-{version}-{secrets.token_hex(4)}"
        try:
            _copy_dir(source, tmp)
            write_text_atomic(tmp / FILES_LIST, json.dumps(files, indent=1, sort_keys=True))
            try:
                os.rename(tmp, final)  # atomic; fails if another process published it first
                fsync_path(final.parent)
                logger.info("published concept index %s of %s to %s", version, encoder_id, root)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    published = _read_files(final)
    try:
        if published != files:
            raise IndexCorrupt("its file list differs from the local version's")
        _verify(final, published)
    except IndexCorrupt as exc:
        raise IndexStoreError(f"index version {version} in {root} differs from the local one "
                              f"({exc}); published versions are immutable") from None
    _advance_latest(root, version)
    return PublishedVersion(encoder_id, version, final, files)


def _advance_latest(root: Path, version: str) -> None:
    """Point ``LATEST`` at ``version`` unless a newer one is already named there."""
    current = latest_version(root)
    if current is None or version > current:
        write_text_atomic(root / LATEST_FILE, version + "\n")


def latest_version(root: Path) -> str | None:
    try:
        name = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return name or None


def latest_published(store_dir: str | Path, encoder_id: str) -> str | None:
    """Name of the newest published version of ``encoder_id`` (None: nothing published)."""
    return latest_version(_store_root(store_dir, encoder_id))


def pull(store_dir: str | Path, encoder_id: str, index_dir: str | Path,
         version: str | None = None, keep: int = 3) -> str | None:
    """Copy a published version (default: ``LATEST``) into ``index_dir``, verified, and make it
    the local ``CURRENT``. Returns the version, or None when nothing is published.

    :raises IndexCorrupt: the copy does not match ``files.json`` (nothing local changes).
    """
    root = _store_root(store_dir, encoder_id)
    version = version or latest_version(root)
    if version is None:
        return None
    source = root / "versions" / version
    files = _read_files(source)
    local_root = encoder_root(index_dir, encoder_id)
    target = local_root / "versions" / version
    if target.is_dir():
        _verify(target, files)
    else:
        (local_root / "versions").mkdir(parents=True, exist_ok=True)
        tmp = local_root / "versions" / f".tmp-pull-{version}-{secrets.token_hex(4)}"
        try:
            _copy_dir(source, tmp)
            _verify(tmp, files)  # before anything can map it
            os.replace(tmp, target)
            fsync_path(target.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("pulled concept index %s of %s from %s", version, encoder_id, root)
    pointer = local_root / CURRENT_FILE
    current = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    if current != version:
        write_text_atomic(pointer, version + "\n")
        prune_versions(local_root, keep)
    return version


def ensure_shared_index(store: Store, encoder: TextEncoder, index_dir: str | Path,
                        store_dir: str | Path, **options) -> ConceptIndex:
    """:func:`~database_tools.bootstrap.ensure_index` through the shared store (module doc).

    A published version whose database version is current is pulled and used as is; otherwise
    the local index is built or updated from it and the result is published for the others.
    """
    from .bootstrap import ensure_index
    from .index_build import build_lock

    with build_lock(index_dir, encoder.encoder_id):  # one pull per host at a time
        pulled = pull(store_dir, encoder.encoder_id, index_dir)
    index = ensure_index(store, encoder, index_dir, **options)
    if index.version != pulled:
        publish(index_dir, encoder.encoder_id, store_dir, index.version)
    return index
