"""The concept index: the engine's retrieval interface (docs/ARCHITECTURE.md).

A faiss index of L2-normalised text embeddings (inner product = cosine) of the store's active
entries, one per encoder, plus an Arrow sidecar with each entry's text and kind so a search needs
no SQL database. Versions are immutable directories switched atomically (see
:mod:`database_tools.index_files`); they are written by :mod:`database_tools.index_build`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from .errors import IndexCorrupt, IndexMismatch, IndexNotFound
from .faiss_threads import threads_for
from .index_files import (
    ENTRIES_FILE,
    EXCLUDED_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    IndexManifest,
    current_version_dir,
    encoder_root,
    file_sha256,
    load_excluded,
    read_entries,
)
from .index_filter import search_without
from .index_policy import apply_search_params

logger = logging.getLogger(__name__)

#: Files up to this size get their sha256 checked on every open; larger ones only their size
#: (hashing 8 GB on each worker start would take a minute). ``verify=True`` forces the hash.
VERIFY_MAX_BYTES = 512 * 1024 * 1024
#: faiss uses its batched BLAS path from 2 queries on (the default 20 made a 100-query
#: batch on 1M x 512 take 5.9 s instead of 0.8-1.0 s).
BLAS_THRESHOLD = 2


@dataclass(frozen=True)
class SearchHit:
    """One retrieved entry. ``vector`` is set only when ``search(..., return_vectors=True)``."""

    entry_id: int
    text: str
    kind: str  # "caption" | "concept"
    score: float  # inner product of L2-normalised vectors (= cosine)
    vector: np.ndarray | None = None  # (dim,) float32


def _read_faiss(path: Path) -> faiss.Index:
    """Read an index memory-mapped and read-only; unreadable -> :class:`IndexCorrupt`.

    ``IO_FLAG_MMAP_IFC`` maps flat codes and IVF lists alike (measured: RSS grows only by
    the pages searched); ``IO_FLAG_MMAP`` is the fallback for types that refuse it.
    """
    errors = []
    for flag in (faiss.IO_FLAG_MMAP_IFC, faiss.IO_FLAG_MMAP):
        try:
            return faiss.read_index(str(path), flag | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError as exc:
            text = str(exc).strip()
            errors.append(text.splitlines()[-1] if text else type(exc).__name__)
    raise IndexCorrupt(f"index file {path} cannot be read by faiss: {errors[0]}")


def _verify_file(path: Path, expected_sha: str, expected_bytes: int | None, verify: bool | None):
    if not path.is_file():
        raise IndexCorrupt(f"index file {path} is missing")
    size = path.stat().st_size
    if expected_bytes is not None and size != expected_bytes:
        raise IndexCorrupt(f"index file {path} is truncated or altered: {size} bytes, "
                           f"manifest says {expected_bytes}; rebuild with tag-db build-index")
    if verify or (verify is None and size <= VERIFY_MAX_BYTES):
        if file_sha256(path) != expected_sha:
            raise IndexCorrupt(f"index file {path} fails its checksum; "
                               "rebuild with tag-db build-index")


class ConceptIndex:
    """A loaded, read-only index version. Thread-safe for concurrent :meth:`search` calls."""

    def __init__(self, path: Path, manifest: IndexManifest, index: faiss.Index,
                 entries: pa.Table, excluded: np.ndarray) -> None:
        self.path = path
        self.manifest = manifest
        self.index = index
        self._entries = entries
        self._ids = entries.column("entry_id").to_numpy()
        self._excluded = excluded
        apply_search_params(index, manifest.search_params)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def entries(self) -> pa.Table:
        """The memory-mapped ``entry_id, kind, text`` table (sorted by id, one row per vector)."""
        return self._entries

    @property
    def excluded_ids(self) -> np.ndarray:
        """Ids still in the faiss index but hidden from results (index without remove_ids)."""
        return self._excluded

    def __len__(self) -> int:
        return int(self.manifest.count - self.manifest.excluded)

    @classmethod
    def open(cls, index_dir: str | Path, encoder_id: str, *, expected_dim: int | None = None,
             verify: bool | None = None) -> ConceptIndex:
        """Load the CURRENT version for ``encoder_id``, memory-mapped.

        :param verify: True: always check sha256 checksums; False: only sizes; None (default):
            checksums of files up to :data:`VERIFY_MAX_BYTES`.
        :raises IndexNotFound: nothing built for this encoder yet.
        :raises IndexMismatch: built with another encoder or dimension.
        :raises IndexCorrupt: truncated, altered or unreadable files.
        """
        root = encoder_root(index_dir, encoder_id)
        if not root.is_dir():
            raise IndexNotFound(_not_found_message(Path(index_dir), encoder_id))
        path = current_version_dir(root)
        manifest = IndexManifest.from_file(path / MANIFEST_FILE)
        _check_manifest(path, manifest, encoder_id, expected_dim)
        _verify_file(path / INDEX_FILE, manifest.index_sha256, manifest.index_bytes, verify)
        _verify_file(path / ENTRIES_FILE, manifest.entries_sha256, None, verify)
        index = _read_faiss(path / INDEX_FILE)
        entries = read_entries(path / ENTRIES_FILE)
        if index.d != manifest.dim or index.ntotal != manifest.count or \
                entries.num_rows != manifest.count:
            raise IndexCorrupt(f"index at {path} disagrees with its manifest "
                               f"(d={index.d}, ntotal={index.ntotal}, rows={entries.num_rows}, "
                               f"manifest dim={manifest.dim}, count={manifest.count})")
        faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
        logger.info("opened concept index %s (%d entries, %s)", path, manifest.count,
                    manifest.factory)
        return cls(path, manifest, index, entries, load_excluded(path / EXCLUDED_FILE))

    def search(self, queries: np.ndarray, k: int, return_vectors: bool = False,
               exclude: np.ndarray | None = None) -> list[list[SearchHit]]:
        """Top-``k`` entries per query row, best first (fewer if the index is smaller).

        :param queries: ``(n, dim)`` float32 embeddings of the same encoder; rows are
            L2-normalised here (a copy), so scores are cosines.
        :param return_vectors: attach each hit's stored vector (exact for flat indexes, 8-bit
            decoded for SQ8) — used for TAG's near-duplicate grouping.
        :param exclude: entry ids to skip (besides the version's own exclusion list); skipped
            during the scan (faiss ``IDSelector``), so excluding costs no extra results.
        """
        queries = self._check_queries(queries, k)
        if len(queries) == 0 or self.index.ntotal == 0:
            return [[] for _ in range(len(queries))]
        excluded = self._excluded if exclude is None or len(exclude) == 0 else \
            np.union1d(self._excluded, np.asarray(exclude, dtype=np.int64))
        with threads_for(self.index, len(queries)):
            scores, ids = search_without(self.index, queries, int(min(self.index.ntotal, k)),
                                         excluded)
        keep = ids >= 0
        per_query = [(ids[i][keep[i]][:k], scores[i][keep[i]][:k]) for i in range(len(ids))]
        flat_ids = np.concatenate([row_ids for row_ids, _ in per_query]).astype(np.int64)
        texts, kinds = self._lookup(flat_ids)
        vectors = self._vectors(flat_ids) if return_vectors else None
        out, pos = [], 0
        for row_ids, row_scores in per_query:
            hits = []
            for entry_id, score in zip(row_ids, row_scores, strict=False):
                vec = vectors[pos] if vectors is not None else None
                hits.append(SearchHit(int(entry_id), texts[pos], kinds[pos], float(score), vec))
                pos += 1
            out.append(hits)
        return out

    def _check_queries(self, queries: np.ndarray, k: int) -> np.ndarray:
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        arr = np.asarray(queries)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {arr.shape}")
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
        if not np.isfinite(arr).all():
            raise ValueError("queries contain NaN or infinite values")
        faiss.normalize_L2(arr)
        return arr

    def _lookup(self, ids: np.ndarray) -> tuple[list[str], list[str]]:
        rows = np.searchsorted(self._ids, ids)
        rows = np.minimum(rows, max(len(self._ids) - 1, 0))
        if len(ids) and not np.array_equal(self._ids[rows], ids):
            raise IndexCorrupt(f"index at {self.path} returned ids missing from its metadata")
        taken = self._entries.take(pa.array(rows, pa.int64()))
        return (taken.column("text").to_pylist(),
                [str(k) for k in taken.column("kind").to_pylist()])

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for i, entry_id in enumerate(ids):
            out[i] = self.index.reconstruct(int(entry_id))
        return out


def _not_found_message(index_dir: Path, encoder_id: str) -> str:
    others = []
    if index_dir.is_dir():
        for manifest in index_dir.glob(f"*/versions/*/{MANIFEST_FILE}"):
            try:
                others.append(IndexManifest.from_file(manifest).encoder_id)
            except IndexCorrupt:
                continue
    hint = (f"; {index_dir} only holds indexes built with {sorted(set(others))}" if others else "")
    return (f"no concept index for encoder {encoder_id!r} in {index_dir}{hint}; "
            "build one with tag-db build-index")


def _check_manifest(path: Path, manifest: IndexManifest, encoder_id: str,
                    expected_dim: int | None) -> None:
    if manifest.encoder_id != encoder_id:
        raise IndexMismatch(f"index at {path} was built with encoder {manifest.encoder_id}, "
                            f"the configured encoder is {encoder_id}; "
                            "rebuild with tag-db build-index")
    if expected_dim is not None and manifest.dim != expected_dim:
        raise IndexMismatch(f"index at {path} has dimension {manifest.dim}, the configured "
                            f"encoder produces {expected_dim}; rebuild with tag-db build-index")
    if manifest.metric != "inner_product" or not manifest.normalised:
        raise IndexMismatch(f"index at {path} uses metric {manifest.metric} "
                            f"(normalised={manifest.normalised}); "
                            "expected normalised inner product")

