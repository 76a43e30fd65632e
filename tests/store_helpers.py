"""Store operations only the tests need (the product writes through importers, corrections and
curation, each inside its own transaction)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import select

from database_tools.normalize import count_texts, display_text, normalize_text
from database_tools.schema import Entry, IndexVersion
from database_tools.sql import insert_exemplar, upsert_entries
from database_tools.store import Store


def add_entries(store: Store, kind: str, texts: Iterable[str], *, source: str = "",
                status: str = "active") -> int:
    """Add (or count again) entries in one transaction; returns how many texts were taken."""
    rows = count_texts(texts, kind)
    if rows:
        with store.write() as txn:
            upsert_entries(txn, kind, rows, source=source, status=status)
    return sum(count for _, count in rows.values())


def get_entry(store: Store, kind: str, text: str) -> Entry | None:
    """The entry whose normalised text matches ``text`` (any status), or None."""
    with store.read() as session:
        return session.scalar(select(Entry).where(Entry.kind == kind,
                                                  Entry.norm == normalize_text(text, kind)))


def add_exemplar(store: Store, encoder_id: str, name: str, embedding: np.ndarray,
                 provenance: dict[str, Any]) -> int:
    """Store a region embedding named ``name`` (concept created if new); returns its id."""
    with store.write() as txn:
        entry_ids = upsert_entries(
            txn, "concept", {normalize_text(name): (display_text(name, "concept"), 0)},
            source=str(provenance.get("source", "exemplar")), status="active")
        return insert_exemplar(txn, encoder_id, next(iter(entry_ids.values())), embedding,
                               provenance)


def latest_index_version(store: Store, encoder_id: str) -> IndexVersion | None:
    """The most recently recorded index version of ``encoder_id``."""
    with store.read() as session:
        return session.scalar(select(IndexVersion).where(IndexVersion.encoder_id == encoder_id)
                              .order_by(IndexVersion.id.desc()).limit(1))
