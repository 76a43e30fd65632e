"""The live concept index: an immutable base version plus a small delta learnt since it was built.

The base (vocabulary and captions, up to ~10M entries) is built off the request path
(``tag-db build-index`` / ``tag-db compact``) and never rewritten when an annotation arrives.
Everything that changed in the store after the base's ``db_version`` — concepts born from
corrections, renames, merges, rejections, revived entries — is read **incrementally** by store
sequence number (:meth:`Store.entries_since`) into:

* a small exact index (``IndexIDMap2(IndexFlatIP)``) of the changed entries that are active now,
  with their current text, and
* a set of base ids hidden from base results (every changed entry: its base copy is stale).

A search queries both and merges the hits by score; base hits of hidden ids are skipped inside
faiss (``IDSelector``, :func:`~database_tools.index_filter.search_without`), so removals cost no
over-fetching. Delta scores are exact cosines; base scores are the base index's (exact for flat
indexes). ``refresh`` costs one small query when nothing changed, and reads only the changed
rows otherwise. The delta is small, so its search runs on the calling thread
(:mod:`database_tools.faiss_threads`).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .embedding import TextEncoder
from .faiss_threads import threads_for
from .index import ConceptIndex, SearchHit

if TYPE_CHECKING:
    from .store import EntryChange, Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaStats:
    """Size of the delta: entries searched exactly, base entries hidden, store seq loaded."""

    entries: int
    hidden: int
    seq: int


class LiveIndex:
    """A :class:`ConceptIndex` plus the store's changes since it was built; same ``search``.

    :param base: the current base version (its manifest's ``db_version`` is where the delta
        starts).
    :param encoder: text encoder of the base's encoder id (cached: a text is encoded once).
    """

    def __init__(self, base: ConceptIndex, encoder: TextEncoder) -> None:
        if encoder.encoder_id != base.manifest.encoder_id:
            raise ValueError(f"encoder {encoder.encoder_id!r} does not match the index's "
                             f"{base.manifest.encoder_id!r}")
        self.base = base
        self.encoder = encoder
        self.seq = int(base.manifest.db_version)
        self._delta = faiss.IndexIDMap2(faiss.IndexFlatIP(base.dim))
        self._texts: dict[int, tuple[str, str]] = {}  # delta id -> (text, kind)
        self._hidden = np.zeros(0, dtype=np.int64)
        self._lock = threading.Lock()

    # -- compatibility with ConceptIndex -----------------------------------------------------
    @property
    def manifest(self):
        return self.base.manifest

    @property
    def dim(self) -> int:
        return self.base.dim

    @property
    def version(self) -> str:
        return self.base.version

    def __len__(self) -> int:
        return len(self.base) - len(self._hidden) + len(self._texts)

    def stats(self) -> DeltaStats:
        return DeltaStats(len(self._texts), len(self._hidden), self.seq)

    # -- incremental loading -----------------------------------------------------------------
    def refresh(self, store: Store, upto: int | None = None) -> int:
        """Apply the store's entry changes after :attr:`seq`; returns how many were applied.

        :param upto: the store's ``db_version`` read by the caller *before* this call (changes
            committed later are picked up next time); read here when not given.
        """
        upto = store.db_version() if upto is None else int(upto)
        if upto <= self.seq:
            return 0
        changes = [c for batch in store.entries_since(self.seq) for c in batch
                   if c.updated_seq <= upto]
        self.apply(changes, upto)
        return len(changes)

    def apply(self, changes: list[EntryChange], seq: int) -> None:
        """Apply entry changes (all with ``updated_seq <= seq``) and move :attr:`seq` to ``seq``."""
        if changes:
            ids = np.array(sorted({c.entry_id for c in changes}), dtype=np.int64)
            latest = {c.entry_id: c for c in changes}  # entries_since yields one row per entry
            adds = [latest[i] for i in ids.tolist() if latest[i].status == "active"]
            vectors = self._encode([c.text for c in adds])
            with self._lock:
                self._delta.remove_ids(ids)
                for entry_id in ids.tolist():
                    self._texts.pop(entry_id, None)
                if len(adds):
                    add_ids = np.array([c.entry_id for c in adds], dtype=np.int64)
                    self._delta.add_with_ids(vectors, add_ids)
                    self._texts.update({c.entry_id: (c.text, c.kind) for c in adds})
                self._hidden = np.union1d(self._hidden, ids)
            logger.info("concept index delta: %d changed entries applied (%d in delta, %d base "
                        "entries hidden, seq %d)", len(changes), len(self._texts),
                        len(self._hidden), seq)
        self.seq = max(self.seq, int(seq))

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = np.array(self.encoder.encode(texts), dtype=np.float32, order="C", copy=True)
        faiss.normalize_L2(vectors)
        return vectors

    # -- search ------------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, return_vectors: bool = False
               ) -> list[list[SearchHit]]:
        """Top-``k`` over base (minus hidden ids) and delta, best first."""
        with self._lock:
            hidden, texts = self._hidden, dict(self._texts)
            delta = self._search_delta(queries, k, return_vectors) if texts else None
        base_hits = self.base.search(queries, k, return_vectors=return_vectors, exclude=hidden)
        if delta is None:
            return base_hits
        scores, ids, vectors = delta
        out = []
        for row, hits in enumerate(base_hits):
            extra = [SearchHit(int(i), texts[int(i)][0], texts[int(i)][1], float(s),
                               vectors[row, j] if return_vectors else None)
                     for j, (i, s) in enumerate(zip(ids[row], scores[row])) if i >= 0]
            out.append(sorted(hits + extra, key=lambda h: -h.score)[:k])
        return out

    def _search_delta(self, queries: np.ndarray, k: int, return_vectors: bool):
        arr = np.array(queries, dtype=np.float32, order="C", copy=True)
        faiss.normalize_L2(arr)
        fetch = min(k, self._delta.ntotal)
        with threads_for(self._delta, len(arr)):
            scores, ids = self._delta.search(arr, fetch)
        vectors = np.zeros((len(arr), fetch, self.dim), dtype=np.float32)
        for row in range(len(arr) if return_vectors else 0):
            for j, entry_id in enumerate(ids[row]):
                if entry_id >= 0:
                    vectors[row, j] = self._delta.reconstruct(int(entry_id))
        return scores, ids, vectors


def open_live_index(store: Store, encoder: TextEncoder, base: ConceptIndex) -> LiveIndex:
    """``base`` with everything the store learnt since it was built."""
    live = LiveIndex(base, encoder)
    live.refresh(store)
    return live
