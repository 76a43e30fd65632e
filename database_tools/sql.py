"""Dialect-portable bulk writes (INSERT ... ON CONFLICT for SQLite and PostgreSQL)."""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite

from .schema import Entry, Exemplar, TextEmbedding, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from .txn import Txn

IN_CHUNK = 500  # stays far below SQLite's bound-parameter limit


def insert_for(session: Session, table: Any) -> Any:
    """``INSERT`` construct with ``on_conflict_do_*`` for the session's dialect."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise ValueError(f"unsupported database dialect {name!r} (use SQLite or PostgreSQL)")


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    """Consecutive slices of at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def upsert_entries(
    txn: Txn,
    kind: str,
    rows: Mapping[str, tuple[str, int]],
    *,
    source: str,
    status: str,
) -> dict[str, int]:
    """Insert or count up entries ``{norm: (text, count)}``; returns ``{norm: entry_id}``.

    New entries get ``status``; an entry previously ``removed`` (its only annotation was
    deleted) comes back with ``status``; other statuses (e.g. rejected) are kept.
    """
    if not rows:
        return {}
    seq, now = txn.seq(), utcnow()
    session = txn.session
    for norms in chunks(sorted(rows)):
        values = [
            {"kind": kind, "norm": n, "text": rows[n][0], "support": rows[n][1],
             "status": status, "source": source, "created_at": now, "updated_at": now,
             "updated_seq": seq}
            for n in norms
        ]
        stmt = insert_for(session, Entry).values(values)
        revived = Entry.status == "removed"
        stmt = stmt.on_conflict_do_update(
            index_elements=["kind", "norm"],
            set_={
                "support": Entry.support + stmt.excluded.support,
                "updated_at": stmt.excluded.updated_at,
                "status": case((revived, stmt.excluded.status), else_=Entry.status),
                "updated_seq": case((revived, stmt.excluded.updated_seq), else_=Entry.updated_seq),
            },
        )
        session.execute(stmt)
    return entry_ids(session, kind, list(rows))


def entry_ids(session: Session, kind: str, norms: Sequence[str]) -> dict[str, int]:
    """``{norm: id}`` of existing entries of ``kind``."""
    found: dict[str, int] = {}
    for part in chunks(sorted(set(norms))):
        for entry_id, norm in session.execute(
            select(Entry.id, Entry.norm).where(Entry.kind == kind, Entry.norm.in_(part))
        ):
            found[norm] = int(entry_id)
    return found


def add_support(txn: Txn, entry_id: int, delta: int) -> None:
    """Change an entry's support count (never below zero)."""
    txn.seq()
    txn.session.execute(
        update(Entry)
        .where(Entry.id == entry_id)
        .values(
            support=case((Entry.support + delta < 0, 0), else_=Entry.support + delta),
            updated_at=utcnow(),
        )
    )


def set_status(txn: Txn, entry_id: int, status: str, merged_into: int | None = None) -> None:
    """Change an entry's status (an index-relevant change: stamps ``updated_seq``)."""
    seq = txn.seq()
    txn.session.execute(
        update(Entry)
        .where(Entry.id == entry_id)
        .values(status=status, merged_into_id=merged_into, updated_seq=seq, updated_at=utcnow())
    )


def vector_bytes(embedding: Any) -> tuple[bytes, int]:
    """A 1-D float32 little-endian blob and its dimension; rejects non-finite vectors."""
    vec = np.asarray(embedding, dtype="<f4").reshape(-1)
    if vec.size == 0 or not np.all(np.isfinite(vec)):
        raise ValueError("embedding must be a non-empty finite vector")
    return vec.tobytes(), int(vec.size)


def insert_exemplar(
    txn: Txn, encoder_id: str, entry_id: int, embedding: Any, provenance: Mapping[str, Any]
) -> int:
    """Add one exemplar row for ``entry_id``; returns its id."""
    blob, dim = vector_bytes(embedding)
    row = Exemplar(
        encoder_id=encoder_id, entry_id=entry_id, dim=dim, vector=blob,
        provenance=json.dumps(dict(provenance), sort_keys=True, default=str), created_at=utcnow(),
        served=True, removed=False, served_seq=txn.seq(),
    )
    txn.session.add(row)
    txn.session.flush()
    return int(row.id)


def insert_text_embeddings(
    session: Session, encoder_id: str, items: Sequence[tuple[str, str, bytes, int]]
) -> None:
    """Cache ``(text_hash, text, blob, dim)`` rows; concurrent duplicates are ignored."""
    for part in chunks(list(items), 200):
        values = [
            {"encoder_id": encoder_id, "text_hash": h, "text": t, "vector": b, "dim": d}
            for h, t, b, d in part
        ]
        stmt = insert_for(session, TextEmbedding).values(values)
        session.execute(stmt.on_conflict_do_nothing(index_elements=["encoder_id", "text_hash"]))
