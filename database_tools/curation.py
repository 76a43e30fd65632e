"""Curation: statistics, listing, approving/rejecting, merging and renaming concepts.

Merging moves support, aliases, exemplars and annotation effects onto the target, so
exemplars of a merged or renamed concept follow it and later undo stays exact.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select, update

from .errors import ConceptNotFound
from .normalize import display_text, normalize_text
from .schema import USER_STATUSES, Alias, AnnotationEffect, Entry, Exemplar, utcnow
from .sql import insert_for, set_status
from .store import Store
from .txn import Txn

logger = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counts for ``tag-db stats``."""

    db_version: int
    by_kind_status: dict[tuple[str, str], int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    most_corrected: list[tuple[str, int]] = field(default_factory=list)
    recent: list[tuple[str, str, str]] = field(default_factory=list)
    aliases: int = 0
    exemplars: dict[str, int] = field(default_factory=dict)


def stats(store: Store, *, top: int = 10) -> Stats:
    """Counts by kind/status and source, most corrected concepts, recent additions."""
    result = Stats(db_version=store.db_version())
    with store.read() as s:
        for kind, status, n in s.execute(
            select(Entry.kind, Entry.status, func.count()).group_by(Entry.kind, Entry.status)
        ):
            result.by_kind_status[(kind, status)] = int(n)
        for source, n in s.execute(
            select(Entry.source, func.count()).group_by(Entry.source).order_by(func.count().desc())
        ):
            result.by_source[source] = int(n)
        total = func.sum(Alias.count)
        result.most_corrected = [
            (text, int(n)) for text, n in s.execute(
                select(Entry.text, total).join(Alias, Alias.entry_id == Entry.id)
                .group_by(Entry.id, Entry.text).order_by(total.desc(), Entry.text).limit(top)
            )
        ]
        result.recent = [
            (kind, text, str(created)) for kind, text, created in s.execute(
                select(Entry.kind, Entry.text, Entry.created_at)
                .order_by(Entry.id.desc()).limit(top)
            )
        ]
        result.aliases = int(s.scalar(select(func.count(Alias.id))) or 0)
        for encoder_id, n in s.execute(
            select(Exemplar.encoder_id, func.count()).group_by(Exemplar.encoder_id)
        ):
            result.exemplars[encoder_id] = int(n)
    return result


def list_concepts(
    store: Store, *, status: str | None = None, source: str | None = None, limit: int = 50
) -> list[Entry]:
    """Concepts filtered by status and source (prefix match), most supported first."""
    query = select(Entry).where(Entry.kind == "concept")
    if status:
        query = query.where(Entry.status == status)
    else:
        query = query.where(Entry.status.in_(USER_STATUSES))
    if source:
        query = query.where(Entry.source.startswith(source))
    with store.read() as s:
        return list(s.scalars(query.order_by(Entry.support.desc(), Entry.text).limit(limit)))


def _find(txn: Txn, name: str) -> Entry:
    entry = txn.session.scalar(
        select(Entry).where(Entry.kind == "concept", Entry.norm == normalize_text(name))
    )
    if entry is None or entry.status in ("merged", "removed"):
        raise ConceptNotFound(f"no concept named {name!r}")
    return entry


def set_concept_status(store: Store, names: Sequence[str], status: str) -> int:
    """Approve (``active``) or reject concepts, all or none; returns how many changed."""
    if status not in USER_STATUSES:
        raise ValueError(f"status must be one of {USER_STATUSES}")
    changed = 0
    with store.write() as txn:
        for name in names:
            entry = _find(txn, name)
            if entry.status != status:
                set_status(txn, entry.id, status)
                changed += 1
    return changed


def _move(txn: Txn, source: Entry, target: Entry) -> None:
    """Move ``source``'s support, aliases, exemplars and effects to ``target``."""
    s = txn.session
    for alias in s.scalars(select(Alias).where(Alias.entry_id == source.id)).all():
        _add_alias(txn, alias.text, target.id, alias.count)
        s.delete(alias)
    s.flush()
    s.execute(update(Exemplar).where(Exemplar.entry_id == source.id).values(entry_id=target.id))
    s.execute(
        update(AnnotationEffect).where(AnnotationEffect.entry_id == source.id)
        .values(entry_id=target.id, alias_id=None)
    )
    s.execute(
        update(Entry).where(Entry.id == target.id)
        .values(support=Entry.support + source.support, updated_at=utcnow())
    )
    s.execute(update(Entry).where(Entry.id == source.id).values(support=0))


def _add_alias(txn: Txn, text: str, entry_id: int, count: int) -> None:
    stmt = insert_for(txn.session, Alias).values(
        text=text, norm=normalize_text(text), entry_id=entry_id, count=count, updated_at=utcnow()
    )
    txn.session.execute(stmt.on_conflict_do_update(
        index_elements=["norm", "entry_id"], set_={"count": Alias.count + stmt.excluded.count}
    ))


def merge_concepts(store: Store, sources: Sequence[str], target: str) -> int:
    """Merge concepts ``sources`` into ``target`` (which must exist); returns how many merged.

    Each merged name becomes an alias of the target, so predictions of it are corrected too.
    """
    merged = 0
    with store.write() as txn:
        into = _find(txn, target)
        for name in sources:
            entry = _find(txn, name)
            if entry.id == into.id:
                raise ValueError(f"cannot merge {name!r} into itself")
            _move(txn, entry, into)
            _add_alias(txn, entry.text, into.id, 1)
            set_status(txn, entry.id, "merged", merged_into=into.id)
            merged += 1
    return merged


def rename_concept(store: Store, old: str, new: str) -> str:
    """Rename a concept; if ``new`` already exists the two are merged. Returns the new text."""
    new_norm = normalize_text(new)
    if not new_norm:
        raise ValueError("the new name is empty")
    with store.write() as txn:
        entry = _find(txn, old)
        other = txn.session.scalar(
            select(Entry).where(Entry.kind == "concept", Entry.norm == new_norm)
        )
        if other is not None and other.id != entry.id:
            if other.status in ("merged", "removed"):
                txn.session.execute(update(Entry).where(Entry.id == other.id).values(
                    norm=f"~retired~{other.id}~{other.norm}", updated_seq=txn.seq()))
            else:
                _move(txn, entry, other)
                _add_alias(txn, entry.text, other.id, 1)
                set_status(txn, entry.id, "merged", merged_into=other.id)
                return other.text
        old_text = entry.text
        txn.session.execute(update(Entry).where(Entry.id == entry.id).values(
            text=display_text(new, "concept"), norm=new_norm, updated_seq=txn.seq(),
            updated_at=utcnow(),
        ))
        if normalize_text(old_text) != new_norm:
            _add_alias(txn, old_text, entry.id, 1)
        return display_text(new, "concept")
