"""Build a concept index from the store, or update it incrementally, as a new atomic version.

Embeddings come through :class:`~database_tools.embedding.CachedTextEncoder`, so a rebuild or an
update never encodes a text twice with the same encoder. Builders hold a file lock per encoder
directory; readers never lock (they open the immutable version named by ``CURRENT``).
"""
from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pyarrow as pa
from filelock import FileLock
from tqdm.auto import tqdm

from .embedding import CachedTextEncoder, TextEncoder
from .errors import IndexBuildError, IndexNotFound
from .index import ConceptIndex
from .index_files import (
    ENTRIES_FILE,
    EXCLUDED_FILE,
    INDEX_FILE,
    KEEP_VERSIONS,
    EntryWriter,
    IndexManifest,
    clean_stale_staging,
    encoder_root,
    file_sha256,
    manifest_summary,
    new_version_name,
    prune_versions,
    publish_version,
    save_excluded,
    staging_dir,
    utc_now_iso,
    write_entries_table,
)
from .index_policy import (
    EXACT_LIMIT,
    TUNING_QUERIES,
    ExactTopK,
    IndexPlan,
    SearchTuning,
    make_index,
    plan_index,
    tune_search,
)
from .index_update import apply_changes

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)

KINDS = ("caption", "concept")
BATCH = 4096
LOCK_TIMEOUT_S = 6 * 3600


@contextmanager
def build_lock(index_dir: str | Path, encoder_id: str) -> Iterator[Path]:
    """Exclusive per-encoder builder lock (processes and threads); yields the encoder root."""
    root = encoder_root(index_dir, encoder_id)
    (root / "versions").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock"), timeout=LOCK_TIMEOUT_S):
        yield root


def cached_encoder(store: Store, encoder: TextEncoder) -> CachedTextEncoder:
    """``encoder`` wrapped in the store's embedding cache (unless it already is)."""
    return encoder if isinstance(encoder, CachedTextEncoder) else CachedTextEncoder(store, encoder)


def build_index(store: Store, encoder: TextEncoder, index_dir: str | Path, *,
                factory: str | None = None, progress: bool = True, keep: int = KEEP_VERSIONS,
                kinds: Sequence[str] = KINDS) -> ConceptIndex:
    """Build a new index version from all active entries and make it CURRENT.

    :param factory: faiss factory string overriding the size policy
        (:func:`~database_tools.index_policy.plan_index`).
    :param keep: how many published versions to keep (older ones are deleted).
    :raises IndexBuildError: the store has no active entries, or bad vectors.
    """
    with build_lock(index_dir, encoder.encoder_id) as root:
        return build_locked(store, encoder, root, index_dir, factory=factory, progress=progress,
                            keep=keep, kinds=kinds)


def build_locked(store: Store, encoder: TextEncoder, root: Path, index_dir: str | Path, *,
                 factory: str | None, progress: bool, keep: int,
                 kinds: Sequence[str]) -> ConceptIndex:
    """:func:`build_index` with the build lock already held."""
    clean_stale_staging(root)
    db_version = store.db_version()  # read first: changes during the build get picked up later
    cached = cached_encoder(store, encoder)
    total = store.count_entries(kinds)
    if total == 0:
        raise IndexBuildError(f"the store {store.safe_url} has no active entries to index; "
                              "import captions or concepts first")
    plan = plan_index(total, cached.dim, factory)
    version = new_version_name()
    staging = staging_dir(root, version)
    try:
        index = make_index(plan, cached.dim)
        truth = None
        if plan.needs_training:
            sample = _training_sample(store, cached, plan, total, kinds)
            index.train(sample)
            rng = np.random.default_rng(1)
            truth = ExactTopK(sample[rng.choice(len(sample), min(TUNING_QUERIES, len(sample)),
                                                replace=False)])
        snapshot = _add_all(store, cached, index, staging, kinds, truth, progress, total)
        tuning = tune_search(index, truth.queries, truth.result()) if truth else SearchTuning()
        manifest = _write_version(index, staging, version, plan.factory, cached.encoder_id,
                                  snapshot, db_version, tuning, parent=None, excluded=0)
        publish_version(root, staging, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _after_publish(store, root, index_dir, manifest, keep)


def _after_publish(store: Store, root: Path, index_dir: str | Path,
                   manifest: IndexManifest, keep: int) -> ConceptIndex:
    removed = prune_versions(root, keep)
    if removed:
        logger.info("pruned old index versions %s", removed)
    store.record_index_version(
        manifest.encoder_id, manifest.version, path=str(root / "versions" / manifest.version),
        snapshot_hash=manifest.snapshot_hash, db_version=manifest.db_version,
        count=manifest.count, manifest=manifest_summary(manifest),
    )
    logger.info("index version %s: %d entries (%s)", manifest.version, manifest.count,
                manifest.factory)
    return ConceptIndex.open(index_dir, manifest.encoder_id)


def _training_sample(store: Store, cached: CachedTextEncoder, plan: IndexPlan, total: int,
                     kinds: Sequence[str]) -> np.ndarray:
    """Vectors of ``plan.train_size`` entries chosen uniformly at random (seeded)."""
    rng = np.random.default_rng(0)
    chosen = np.sort(rng.choice(total, size=min(plan.train_size, total), replace=False))
    parts, offset = [], 0
    for batch in store.iter_entries(kinds, ("active",), BATCH):
        lo, hi = np.searchsorted(chosen, [offset, offset + len(batch)])
        picks = chosen[lo:hi] - offset
        if len(picks):
            parts.append(_normalised(cached.encode([batch[i][2] for i in picks])))
        offset += len(batch)
    logger.info("training %s on %d vectors", plan.factory, sum(len(p) for p in parts))
    return np.concatenate(parts)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """Finite, L2-normalised float32 copy; zero or non-finite vectors are refused."""
    out = np.array(vectors, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(out, axis=1) if len(out) else np.zeros(0)
    if not np.isfinite(out).all() or np.any(norms < 1e-6):
        raise IndexBuildError("the encoder returned zero or non-finite vectors")
    out /= norms[:, None]
    return out


def _add_all(store: Store, cached: CachedTextEncoder, index: faiss.Index, staging: Path,
             kinds: Sequence[str], truth: ExactTopK | None, progress: bool, total: int) -> str:
    """Encode and add every active entry; write the metadata; return the snapshot hash."""
    digest = hashlib.sha256()  # same formula as Store.snapshot_hash, over what was indexed
    writer = EntryWriter(staging / ENTRIES_FILE)
    with tqdm(total=total, desc="indexing", unit="entry", disable=not progress) as bar:
        for batch in store.iter_entries(kinds, ("active",), BATCH):
            ids = np.fromiter((row[0] for row in batch), dtype=np.int64, count=len(batch))
            texts = [row[2] for row in batch]
            vectors = _normalised(cached.encode(texts))
            index.add_with_ids(vectors, ids)
            writer.write(ids, [row[1] for row in batch], texts)
            if truth is not None:
                truth.add(vectors, ids)
            for entry_id, kind, text in batch:
                digest.update(f"{entry_id}\t{kind}\t{text}\n".encode())
            bar.update(len(batch))
    writer.close()
    if index.ntotal == 0:
        raise IndexBuildError("no active entries were read from the store")
    return digest.hexdigest()


def _write_version(index: faiss.Index, staging: Path, version: str, factory: str,
                   encoder_id: str, snapshot: str, db_version: int, tuning: SearchTuning, *,
                   parent: str | None, excluded: int) -> IndexManifest:
    """Write ``index.faiss`` into ``staging`` and return the manifest describing the version."""
    index_path = staging / INDEX_FILE
    faiss.write_index(index, str(index_path))
    return IndexManifest(
        version=version, encoder_id=encoder_id, dim=int(index.d), count=int(index.ntotal),
        factory=factory, snapshot_hash=snapshot, db_version=int(db_version),
        index_sha256=file_sha256(index_path), index_bytes=index_path.stat().st_size,
        entries_sha256=file_sha256(staging / ENTRIES_FILE), search_params=tuning.params,
        recall_at_10=tuning.recall, excluded=excluded, parent_version=parent,
        created_at=utc_now_iso(),
    )


def update_index(store: Store, encoder: TextEncoder, index_dir: str | Path, *,
                 progress: bool = True, keep: int = KEEP_VERSIONS,
                 kinds: Sequence[str] = KINDS) -> ConceptIndex:
    """Apply the store's changes since the CURRENT version without a full rebuild.

    New active entries are added, entries no longer active (or whose text changed) removed —
    or, for index types without ``remove_ids``, hidden through an exclusion list. Builds from
    scratch when nothing exists yet or when the size crosses the exact/approximate boundary.
    Returns the current index unchanged when no indexed entry changed.
    """
    with build_lock(index_dir, encoder.encoder_id) as root:
        return update_locked(store, encoder, root, index_dir, progress=progress, keep=keep,
                             kinds=kinds)


def update_locked(store: Store, encoder: TextEncoder, root: Path, index_dir: str | Path, *,
                  progress: bool, keep: int, kinds: Sequence[str]) -> ConceptIndex:
    """:func:`update_index` with the build lock already held."""
    rebuild = dict(factory=None, progress=progress, keep=keep, kinds=kinds)
    try:
        current = ConceptIndex.open(index_dir, encoder.encoder_id, expected_dim=int(encoder.dim))
    except IndexNotFound:
        return build_locked(store, encoder, root, index_dir, **rebuild)
    db_version = store.db_version()
    changes = [c for batch in store.entries_since(current.manifest.db_version, kinds)
               for c in batch]
    if not changes:
        return current
    manifest = current.manifest
    adds = [c for c in changes if c.status == "active"]
    if _crosses_policy(manifest, manifest.count + len(adds)):
        logger.info("index grows past the exact-search limit: full rebuild")
        return build_locked(store, encoder, root, index_dir, **rebuild)
    result = apply_changes(current, cached_encoder(store, encoder), changes)
    if result is None:  # index type cannot remove a re-added id: rebuild
        return build_locked(store, encoder, root, index_dir, **rebuild)
    index, entries, excluded = result
    return _publish_update(store, root, index_dir, current, index, entries, excluded,
                           db_version, keep, kinds)


def _crosses_policy(manifest: IndexManifest, new_count: int) -> bool:
    policy_chosen = manifest.factory == plan_index(max(manifest.count, 1), manifest.dim).factory
    return policy_chosen and (manifest.count < EXACT_LIMIT) != (new_count < EXACT_LIMIT)


def _publish_update(store: Store, root: Path, index_dir: str | Path, current: ConceptIndex,
                    index: faiss.Index, entries: pa.Table, excluded: np.ndarray,
                    db_version: int, keep: int, kinds: Sequence[str]) -> ConceptIndex:
    version = new_version_name()
    staging = staging_dir(root, version)
    try:
        write_entries_table(staging / ENTRIES_FILE, entries)
        if len(excluded):
            save_excluded(staging / EXCLUDED_FILE, excluded)
        tuning = SearchTuning(dict(current.manifest.search_params), current.manifest.recall_at_10)
        manifest = _write_version(index, staging, version, current.manifest.factory,
                                  current.manifest.encoder_id, store.snapshot_hash(kinds),
                                  db_version, tuning, parent=current.version,
                                  excluded=int(len(excluded)))
        publish_version(root, staging, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _after_publish(store, root, index_dir, manifest, keep)

