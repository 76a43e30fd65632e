"""Apply store changes to a copy of an index version (the incremental path of update_index).

The serving version is memory-mapped read-only and must never be modified in place (faiss
crashes on writes to a read-only mapping); this module reads a private, writable copy.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .embedding import CachedTextEncoder
from .errors import IndexCorrupt
from .index_files import ENTRY_SCHEMA, INDEX_FILE, sort_entries

if TYPE_CHECKING:
    from .index import ConceptIndex
    from .store import EntryChange

logger = logging.getLogger(__name__)


def _read_writable(current: ConceptIndex) -> faiss.Index:
    try:
        return faiss.read_index(str(current.path / INDEX_FILE))
    except RuntimeError as exc:
        raise IndexCorrupt(f"index file in {current.path} cannot be read: {exc}") from None


def _remove(index: faiss.Index, ids: np.ndarray) -> bool:
    """``remove_ids``; False when the index type does not support removal."""
    if len(ids) == 0:
        return True
    try:
        removed = index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
    except RuntimeError as exc:
        logger.info("index type cannot remove ids (%s): using an exclusion list", exc)
        return False
    if removed != len(ids):
        raise IndexCorrupt(f"removed {removed} of {len(ids)} ids that the metadata lists")
    return True


def apply_changes(
    current: ConceptIndex, cached: CachedTextEncoder, changes: Sequence[EntryChange]
) -> tuple[faiss.Index, pa.Table, np.ndarray] | None:
    """New (index, entries table, excluded ids), or None when a full rebuild is needed.

    Every changed entry already in the index is removed; those now active are (re-)added
    with their current text. Unchanged entries are not touched, so never re-encoded.
    """
    index = _read_writable(current)
    entries = current.entries
    indexed = entries.column("entry_id").to_numpy()
    changed = np.array(sorted({c.entry_id for c in changes}), dtype=np.int64)
    present = changed[np.isin(changed, indexed)]
    adds = sorted((c for c in changes if c.status == "active"), key=lambda c: c.entry_id)
    add_ids = np.array([c.entry_id for c in adds], dtype=np.int64)
    excluded = current.excluded_ids
    if _remove(index, present):
        keep_mask = pc.invert(pc.is_in(entries.column("entry_id"), pa.array(present)))
        entries = entries.filter(keep_mask)
    elif np.isin(add_ids, np.concatenate([present, excluded])).any():
        return None
    else:
        excluded = np.union1d(excluded, present)
    if len(adds):
        vectors = np.asarray(cached.encode([c.text for c in adds]), dtype=np.float32)
        vectors = np.ascontiguousarray(vectors)
        faiss.normalize_L2(vectors)
        index.add_with_ids(vectors, add_ids)
        new_rows = pa.table(
            {"entry_id": pa.array(add_ids, pa.int64()),
             "kind": pa.array([c.kind for c in adds]).dictionary_encode().cast(
                 ENTRY_SCHEMA.field("kind").type),
             "text": pa.array([c.text for c in adds], pa.string())},
            schema=ENTRY_SCHEMA,
        )
        entries = pa.concat_tables([entries.cast(ENTRY_SCHEMA), new_rows])
    logger.info("index update: %d removed, %d added", len(present), len(adds))
    return index, sort_entries(entries), excluded
