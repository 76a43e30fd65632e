"""Bounded visual memory: which exemplars are served, and the in-process index that serves them.

**Selection (in the correction's transaction).** Every stored exemplar of a concept is a
*candidate*; at most ``per_concept`` of them are *served*, chosen by greedy k-center
(farthest-point) selection, seeded with the oldest candidate: each pick is the candidate
farthest (lowest best cosine) from those already picked, so the served set covers the concept's
appearances instead of piling up near-duplicates of its most common view. Selection is a
deterministic function of the concept's live candidates, recomputed whenever one is added or
retired, so undoing an annotation restores exactly the served set it would have without it.
The total number of live candidates per encoder is capped too; at the cap new exemplars are
refused (the correction's names, support and aliases are still recorded).

**Serving (in every process).** :class:`ExemplarIndex` holds the served exemplars of active
concepts in a faiss inner-product index keyed by exemplar id — exact (flat) up to
:data:`IVF_FROM` exemplars, then an inverted file of half floats (:mod:`.exemplar_ivf`, trained
on the served vectors; recall in docs/learning.md) because an exact scan costs one image's
regions about a millisecond per 2,000 exemplars of 512 dimensions. When the served set has
doubled since the inverted file was trained, a new one is trained **in a background thread**
from a snapshot (seconds at 100,000 exemplars) while the current one keeps serving; adds and
removals made meanwhile are replayed onto it before the swap, so neither lookups nor the
correction path wait for k-means. The index follows the store incrementally:
exemplars whose ``served_seq`` moved past the loaded sequence number are added or removed, and
concepts whose status/text changed (rejected, merged, renamed, revived) have their exemplars
remapped or dropped. Nothing is reloaded in full after the first load, and a refresh costs what changed,
not what is loaded. One image's lookup runs on the calling thread
(:mod:`database_tools.faiss_threads`).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np
from sqlalchemy import func, select, update

from .exemplar_ivf import build_ivf
from .faiss_threads import threads_for
from .schema import Entry, Exemplar
from .sql import chunks, insert_exemplar

if TYPE_CHECKING:
    from .store import Store, Txn

logger = logging.getLogger(__name__)

DEFAULT_PER_CONCEPT = 32
DEFAULT_TOTAL = 200_000
#: Exemplar count from which the serving index is an inverted file instead of a flat scan
#: (an exact scan of 2,000 x 512 costs one image's 15 regions ~0.8 ms on one core, of 20,000
#: ~10 ms; the inverted file at 100,000 ~1.5 ms).
IVF_FROM = 2_000


@dataclass(frozen=True)
class ExemplarLimits:
    """``per_concept``: served exemplars per concept; ``total``: live candidates per encoder."""

    per_concept: int = DEFAULT_PER_CONCEPT
    total: int = DEFAULT_TOTAL

    def __post_init__(self) -> None:
        if self.per_concept < 1 or self.total < 1:
            raise ValueError("exemplar limits must be >= 1")


def k_center(vectors: np.ndarray, k: int) -> list[int]:
    """Row indices of a greedy k-center selection (first row first; deterministic)."""
    n = len(vectors)
    if n <= k:
        return list(range(n))
    chosen = [0]
    best = vectors @ vectors[0]  # best cosine of each row to the chosen set
    for _ in range(k - 1):
        best_masked = best.copy()
        best_masked[chosen] = np.inf
        pick = int(np.argmin(best_masked))
        chosen.append(pick)
        best = np.maximum(best, vectors @ vectors[pick])
    return sorted(chosen)


def _vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def reselect(txn: Txn, encoder_id: str, entry_id: int, per_concept: int) -> None:
    """Recompute which live candidates of one concept are served (stamps changed rows)."""
    rows = txn.session.execute(
        select(Exemplar.id, Exemplar.vector, Exemplar.served)
        .where(Exemplar.encoder_id == encoder_id, Exemplar.entry_id == entry_id,
               Exemplar.removed.is_(False))
        .order_by(Exemplar.id)
    ).all()
    if not rows:
        return
    vectors = np.stack([_vector(r[1]) for r in rows])
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    chosen = set(k_center(vectors, per_concept))
    flips = [(int(r[0]), i in chosen) for i, r in enumerate(rows) if bool(r[2]) != (i in chosen)]
    if not flips:
        return
    seq = txn.seq()
    for served in (True, False):
        ids = [i for i, s in flips if s == served]
        for part in chunks(ids):
            txn.session.execute(update(Exemplar).where(Exemplar.id.in_(part))
                                .values(served=served, served_seq=seq))


def learn_exemplar(txn: Txn, encoder_id: str, entry_id: int, embedding: np.ndarray,
                   provenance: dict, limits: ExemplarLimits) -> int | None:
    """Add a candidate exemplar and reselect its concept; None when the total cap is reached."""
    live = int(txn.session.scalar(  # count(*): answered from ix_exemplars_encoder_removed
        select(func.count()).select_from(Exemplar).where(Exemplar.encoder_id == encoder_id,
                                                         Exemplar.removed.is_(False))) or 0)
    if live >= limits.total:
        logger.warning("exemplar memory of %s is full (%d candidates, TAG_EXEMPLARS_TOTAL): "
                       "region not added", encoder_id, live)
        return None
    exemplar_id = insert_exemplar(txn, encoder_id, entry_id, embedding, provenance)
    reselect(txn, encoder_id, entry_id, limits.per_concept)
    return exemplar_id


def retire_exemplar(txn: Txn, exemplar_id: int, per_concept: int) -> None:
    """Undo one candidate (its annotation was updated or deleted) and reselect its concept."""
    row = txn.session.get(Exemplar, exemplar_id)
    if row is None or row.removed:
        return
    row.removed, row.served, row.served_seq = True, False, txn.seq()
    txn.session.flush()
    reselect(txn, row.encoder_id, row.entry_id, per_concept)


@dataclass(frozen=True)
class ExemplarMatch:
    """The nearest served exemplar of a query: its concept and cosine."""

    entry_id: int
    name: str
    score: float


class ExemplarIndex:
    """Served exemplars of one encoder, followed incrementally from the store. Thread-safe."""

    def __init__(self, encoder_id: str) -> None:
        self.encoder_id = encoder_id
        self.seq = -1  # nothing loaded yet
        self._index: faiss.IndexIDMap2 | None = None
        self._entry_of: dict[int, int] = {}  # exemplar id -> entry id
        self._exemplars_of: dict[int, set[int]] = {}  # entry id -> its exemplar ids
        self._names: dict[int, str] = {}  # entry id -> concept text
        self._lock = threading.Lock()
        self._trained_on = 0  # exemplar count the serving IVF was trained on (0: flat)
        self._retrain_due = False
        self._retrainer: threading.Thread | None = None
        # (ids, vectors or None for a removal) applied while a retrain builds its index
        self._changes_during_retrain: list[tuple[np.ndarray, np.ndarray | None]] | None = None

    def __len__(self) -> int:
        return len(self._entry_of)

    @property
    def kind(self) -> str:
        """``flat`` or ``ivf<nlist>,fp16`` (the serving structure)."""
        if isinstance(self._index, faiss.IndexIVF):
            return f"ivf{self._index.nlist},fp16"
        return "flat"

    def memory_bytes(self) -> int:
        """Approximate bytes: vectors (float32 flat, float16 in the inverted file), faiss ids
        (and IVF direct map), Python id maps (exemplar -> concept ~120 bytes a row, concept ->
        exemplars ~50)."""
        dim = self._index.d if self._index is not None else 0
        per_row = 4 * dim + 8 + 170
        if isinstance(self._index, faiss.IndexIVF):
            per_row += 16 - 2 * dim
        return len(self._entry_of) * per_row

    # -- loading -----------------------------------------------------------------------------
    def refresh(self, store: Store, upto: int | None = None) -> int:
        """Apply served-set and concept changes after :attr:`seq`; returns rows applied."""
        upto = store.db_version() if upto is None else int(upto)
        if upto <= self.seq:
            return 0
        since = max(self.seq, 0)
        columns = (Exemplar.id, Exemplar.entry_id, Exemplar.served, Exemplar.removed,
                   Exemplar.vector, Entry.status, Entry.text)
        first = self.seq < 0
        query = (select(*columns, Exemplar.encoder_id)
                 .join(Entry, Entry.id == Exemplar.entry_id)
                 .where(Exemplar.served_seq > (-1 if first else since),
                        Exemplar.served_seq <= upto))
        # the first load reads this encoder's rows; a refresh reads the few changed rows through
        # the sequence index and keeps this encoder's here (an encoder condition in SQL makes
        # SQLite, which has no statistics, scan every exemplar of the encoder instead)
        if first:
            query = query.where(Exemplar.encoder_id == self.encoder_id)
        with store.read() as session:
            rows = [r[:-1] for r in session.execute(query.order_by(Exemplar.id))
                    if r[-1] == self.encoder_id]
        changed_entries = [] if self.seq < 0 else [
            c for batch in store.entries_since(since, kinds=("concept",)) for c in batch
            if c.updated_seq <= upto]
        applied = self._apply_rows(rows)
        if changed_entries:
            applied += self._apply_entry_changes(store, changed_entries)
        self.seq = upto
        self._start_retrain()
        return applied

    def _apply_rows(self, rows: Iterable) -> int:
        adds, removes, n = [], [], 0
        for ex_id, entry_id, served, removed, blob, status, text in rows:
            n += 1
            removes.append(int(ex_id))
            if served and not removed and status == "active":
                adds.append((int(ex_id), int(entry_id), blob))
                self._names[int(entry_id)] = text
        with self._lock:
            self._remove(removes)
            self._add(adds)
        return n

    def _apply_entry_changes(self, store: Store, changes: list) -> int:
        """Concepts whose status or text changed: rename, drop, remap moved or revived rows."""
        touched = {c.entry_id for c in changes}
        for c in changes:
            if c.status == "active":
                self._names[c.entry_id] = c.text
        mine = [ex for entry in touched for ex in self._exemplars_of.get(entry, ())]
        with store.read() as session:
            rows = []
            for part in chunks(mine):
                rows += session.execute(
                    select(Exemplar.id, Exemplar.entry_id, Exemplar.served, Exemplar.removed,
                           Exemplar.vector, Entry.status, Entry.text)
                    .join(Entry, Entry.id == Exemplar.entry_id)
                    .where(Exemplar.id.in_(part))).all()
            active = [c.entry_id for c in changes if c.status == "active"]
            for part in chunks(active):
                rows += session.execute(
                    select(Exemplar.id, Exemplar.entry_id, Exemplar.served, Exemplar.removed,
                           Exemplar.vector, Entry.status, Entry.text)
                    .join(Entry, Entry.id == Exemplar.entry_id)
                    .where(Exemplar.encoder_id == self.encoder_id, Exemplar.entry_id.in_(part),
                           Exemplar.served.is_(True))).all()
        unique = list({int(r[0]): r for r in rows}.values())
        gone = set(mine) - {int(r[0]) for r in unique}
        with self._lock:
            self._remove(list(gone))
        return self._apply_rows(unique)

    def _remove(self, ids: list[int]) -> None:
        present = [i for i in dict.fromkeys(ids) if i in self._entry_of]
        if present and self._index is not None:
            self._index.remove_ids(np.array(present, dtype=np.int64))
            if self._changes_during_retrain is not None:
                self._changes_during_retrain.append((np.array(present, dtype=np.int64), None))
        for i in present:
            entry = self._entry_of.pop(i)
            exemplars = self._exemplars_of[entry]
            exemplars.discard(i)
            if not exemplars:
                del self._exemplars_of[entry]

    def _add(self, rows: list[tuple[int, int, bytes]]) -> None:
        if not rows:
            return
        vectors = np.stack([_vector(blob) for _, _, blob in rows])
        faiss.normalize_L2(vectors)
        if self._index is None:
            self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        if vectors.shape[1] != self._index.d:
            raise ValueError(f"exemplars of {self.encoder_id!r} have dimension "
                             f"{vectors.shape[1]}, expected {self._index.d}")
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._index.add_with_ids(vectors, ids)
        if self._changes_during_retrain is not None:
            self._changes_during_retrain.append((ids, vectors))
        for ex, entry, _ in rows:
            self._entry_of[ex] = entry
            self._exemplars_of.setdefault(entry, set()).add(ex)
        if len(self._entry_of) >= max(IVF_FROM, 2 * self._trained_on):
            if self._trained_on:  # an inverted file serves: retrain it off the lookup path
                self._retrain_due = True
            else:  # flat so far (a first load, or the switch at IVF_FROM): build it now
                self._index, self._trained_on = self._snapshot_ivf(), len(self._entry_of)

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(sorted(self._entry_of), dtype=np.int64)
        return ids, np.ascontiguousarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def _snapshot_ivf(self) -> faiss.IndexIVF:
        ids, vectors = self._snapshot()
        ivf = build_ivf(vectors, ids)
        logger.info("exemplar index: %d exemplars in IVF%d,SQfp16", ivf.ntotal, ivf.nlist)
        return ivf

    def _start_retrain(self) -> None:
        """Start the background retrain when one is due and none runs."""
        with self._lock:
            if not self._retrain_due or (self._retrainer is not None
                                         and self._retrainer.is_alive()):
                return
            ids, vectors = self._snapshot()
            self._retrain_due, self._trained_on = False, len(ids)
            self._changes_during_retrain = []
            self._retrainer = threading.Thread(target=self._retrain, args=(ids, vectors),
                                               name="exemplar-ivf-retrain", daemon=True)
            self._retrainer.start()

    def _retrain(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Train on the snapshot, replay what changed meanwhile, swap (background thread)."""
        try:
            ivf = build_ivf(vectors, ids)
        except Exception:  # noqa: BLE001 - the current index keeps serving; logged loudly
            logger.exception("exemplar index: retraining the inverted file failed; the current "
                             "one keeps serving until the served set doubles again")
            with self._lock:
                self._changes_during_retrain = None
            return
        with self._lock:
            for changed, added in self._changes_during_retrain or []:
                if added is None:
                    ivf.remove_ids(changed)
                else:
                    ivf.add_with_ids(added, changed)
            self._changes_during_retrain = None
            self._index = ivf
        logger.info("exemplar index: retrained, %d exemplars in IVF%d,SQfp16", ivf.ntotal,
                    ivf.nlist)

    # -- matching ----------------------------------------------------------------------------
    def match(self, queries: np.ndarray, threshold: float = -1.0) -> list[ExemplarMatch | None]:
        """The nearest served exemplar of each (L2-normalised) query row, if >= ``threshold``."""
        with self._lock:
            if self._index is None or not self._entry_of or queries.shape[1] != self._index.d:
                return [None] * len(queries)
            with threads_for(self._index, len(queries)):
                scores, ids = self._index.search(
                    np.ascontiguousarray(queries, dtype=np.float32), 1)
            out: list[ExemplarMatch | None] = []
            for score, ex_id in zip(scores[:, 0], ids[:, 0]):
                entry = self._entry_of.get(int(ex_id)) if ex_id >= 0 else None
                if entry is None or score < threshold:
                    out.append(None)
                else:
                    out.append(ExemplarMatch(entry, self._names.get(entry, ""), float(score)))
            return out
