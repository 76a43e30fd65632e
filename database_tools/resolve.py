"""Resolve annotators' free-form names to the concepts they stand for (exports, reports).

A name resolves, in order, to: its own concept, followed through merges (``tag-db concepts merge``
/ ``rename`` onto an existing name); else the concept annotators most often corrected it to (an
alias, which is also what merged and renamed names leave behind); else to itself, with no concept.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from .normalize import display_text, normalize_text
from .schema import Alias, Entry
from .store import Store

_MAX_MERGE_HOPS = 32  # merge chains are short; the bound only guards against a corrupt cycle


@dataclass(frozen=True)
class ResolvedName:
    """What a name stands for: the concept's text and id (None: the store does not know it)."""

    name: str
    concept_id: int | None
    how: str  # "concept", "merged", "alias" or "unknown"


def resolve_names(store: Store, names: list[str] | set[str]) -> dict[str, ResolvedName]:
    """Each distinct name -> :class:`ResolvedName`, in one read transaction."""
    out: dict[str, ResolvedName] = {}
    with store.read() as session:
        for name in names:
            norm = normalize_text(name, "concept")
            entry = session.scalar(select(Entry).where(Entry.kind == "concept", Entry.norm == norm))
            if entry is not None and entry.status != "removed":
                hops = 0
                how = "concept"
                while entry.status == "merged" and entry.merged_into_id is not None and hops < _MAX_MERGE_HOPS:
                    entry = session.get(Entry, entry.merged_into_id)
                    how, hops = "merged", hops + 1
                out[name] = ResolvedName(entry.text, entry.id, how)
                continue
            alias = session.execute(
                select(Entry.text, Entry.id).join(Alias, Alias.entry_id == Entry.id)
                .where(Alias.norm == norm, Entry.status == "active")
                .order_by(Alias.count.desc(), Alias.id).limit(1)
            ).first()
            if alias is not None:
                out[name] = ResolvedName(alias[0], int(alias[1]), "alias")
            else:
                out[name] = ResolvedName(display_text(name, "concept"), None, "unknown")
    return out
