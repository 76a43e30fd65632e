"""Knowledge releases: the ``r<N>`` part of ``model_version``.

Learning is live (the next prediction uses the newest corrections), but ``model_version`` only
changes when a release is cut: explicitly (``tag-db release``, Label Studio's "Start Training")
or by the release policy (:func:`policy_due`). A release names the store sequence number it was
cut at, and cutting one takes a sequence number of its own, so every serving process notices
it with the one-query check it already makes for corrections. ``number`` has a unique
constraint: two processes cutting a release at once cannot publish the same number (on
PostgreSQL the sequence row lock serialises them; if an insert still collides, the loser
retries with the next number).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .errors import DatabaseToolsError
from .schema import Annotation, KnowledgeRelease, utcnow

if TYPE_CHECKING:
    from .store import Store

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20


class ReleasePolicyError(DatabaseToolsError, ValueError):
    """A release policy string that cannot be parsed."""


@dataclass(frozen=True)
class Release:
    """One knowledge release (``number`` 0 = nothing released yet)."""

    number: int
    db_seq: int
    note: str = ""
    source: str = ""
    created_at: datetime | None = None

    @property
    def label(self) -> str:
        return f"r{self.number}"


NO_RELEASE = Release(0, 0)


def _as_release(row: KnowledgeRelease) -> Release:
    created = row.created_at
    if created is not None and created.tzinfo is None:  # SQLite returns naive UTC
        created = created.replace(tzinfo=timezone.utc)
    return Release(int(row.number), int(row.db_seq), row.note, row.source, created)


def current_release(store: Store) -> Release:
    """The newest release, or :data:`NO_RELEASE`."""
    with store.read() as session:
        row = session.scalar(select(KnowledgeRelease)
                             .order_by(KnowledgeRelease.number.desc()).limit(1))
    return _as_release(row) if row is not None else NO_RELEASE


def list_releases(store: Store, limit: int = 100) -> list[Release]:
    """Releases, newest first."""
    with store.read() as session:
        rows = session.scalars(select(KnowledgeRelease)
                               .order_by(KnowledgeRelease.number.desc()).limit(limit)).all()
    return [_as_release(r) for r in rows]


def cut_release(store: Store, *, note: str = "", source: str = "cli",
                force: bool = False) -> tuple[Release, bool]:
    """Cut a release at the store's current sequence number; returns ``(release, created)``.

    Without ``force``, nothing is cut when the store has not changed since the newest release
    (a release would invalidate every stored prediction for nothing).
    """
    for attempt in range(MAX_ATTEMPTS):
        try:
            with store.write() as txn:
                session = txn.session
                newest = session.scalar(select(KnowledgeRelease)
                                        .order_by(KnowledgeRelease.number.desc()).limit(1))
                seq = store_seq(session)
                if newest is not None and not force and int(newest.db_seq) >= seq:
                    return _as_release(newest), False
                seq = txn.seq()  # a release is news for every process (model_version changes)
                number = (int(newest.number) if newest is not None else 0) + 1
                row = KnowledgeRelease(number=number, db_seq=seq, note=note[:2000],
                                       source=source[:64], created_at=utcnow())
                session.add(row)
                session.flush()
                release = _as_release(row)
            logger.info("knowledge release %s cut at store seq %d (%s)", release.label, seq,
                        source)
            return release, True
        except IntegrityError:
            logger.info("release number taken by a concurrent release; retrying")
            time.sleep(0.01 * (attempt + 1))
    raise DatabaseToolsError(f"could not cut a release after {MAX_ATTEMPTS} attempts")


def store_seq(session) -> int:
    """The store's ``db_version`` inside an open session."""
    from .schema import Meta

    return int(session.scalar(select(Meta.db_version).where(Meta.id == 1)) or 0)


@dataclass(frozen=True)
class ReleasePolicy:
    """When releases are cut automatically: never (``manual``), after ``corrections``
    recorded annotations, or when ``minutes`` have passed and something was learnt."""

    kind: str = "manual"
    value: int = 0

    @classmethod
    def parse(cls, text: str) -> ReleasePolicy:
        raw = (text or "manual").strip().lower()
        if raw == "manual":
            return cls()
        match = re.fullmatch(r"(corrections|minutes):(\d+)", raw)
        if not match or int(match.group(2)) < 1:
            raise ReleasePolicyError(f"release policy must be 'manual', 'corrections:N' or "
                                     f"'minutes:T' with N, T >= 1; got {text!r}")
        return cls(match.group(1), int(match.group(2)))


def policy_due(store: Store, policy: ReleasePolicy, now: datetime | None = None) -> bool:
    """Whether ``policy`` asks for a release now (cheap: two small queries)."""
    if policy.kind == "manual":
        return False
    newest = current_release(store)
    if newest.number and store.db_version() <= newest.db_seq:
        return False
    if policy.kind == "minutes":
        if newest.created_at is None:
            return store.db_version() > 0
        return (now or datetime.now(timezone.utc)) - newest.created_at \
            >= timedelta(minutes=policy.value)
    since = newest.created_at or datetime(1970, 1, 1, tzinfo=timezone.utc)
    with store.read() as session:
        recorded = int(session.scalar(select(func.count(Annotation.id))
                                      .where(Annotation.recorded_at > since)) or 0)
    return recorded >= policy.value


def apply_policy(store: Store, policy: ReleasePolicy) -> Release | None:
    """Cut a release when the policy says so; the new release or None."""
    if not policy_due(store, policy):
        return None
    release, created = cut_release(store, note=f"policy {policy.kind}:{policy.value}",
                                   source="policy")
    return release if created else None
