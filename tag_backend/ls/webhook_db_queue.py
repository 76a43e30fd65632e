"""The webhook queue in the database, for several replicas on one PostgreSQL.

With one node the file spool (:mod:`.webhook_queue`) is enough; with replicas behind a load
balancer a correction received by replica A must be processable by any replica, survive A's
disk, and be applied in order per annotation. So on PostgreSQL ``/webhook`` writes the payload
to the ``webhook_events`` table (created by the job tables' migration ``jobs_0002``, see
:mod:`tag_backend.jobs.schema`) and every replica's
:class:`~.corrections.CorrectionWorker` claims from it, through the same interface as
:class:`~.webhook_queue.WebhookSpool` (``put``, ``claim``, ``done``, ``retry``, ``fail``,
``depth``, ``recover``).

* **order**: events carry an order key — ``annotation:<id>`` for singular annotation events,
  ``project:<id>`` for bulk ones and ``START_TRAINING`` — and an event is claimed only when no
  earlier event of its key is waiting or being processed, so an update is never applied before
  the creation it follows, even when they reach two replicas (a retried event keeps its place
  and holds back the later ones of its key).
* **leases**: a claim is leased to its worker for ``lease_seconds``; a replica killed while
  processing loses the lease and another replica takes the event over.
* **database down**: ``put`` falls back to the local file spool, so ``/webhook`` still answers
  at once and nothing is lost; the spooled payloads move into the table as soon as the database
  answers again (before the next claim).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    exists,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine

from ..sql_claims import update_picked
from .webhook_queue import WebhookSpool

logger = logging.getLogger(__name__)

#: How long a claimed event stays with its worker (START_TRAINING re-ingests can be long).
LEASE_SECONDS = 1800.0
_ACTIVE = "status IN ('pending', 'working')"

metadata = MetaData()
webhook_events = Table(
    "webhook_events", metadata,
    Column("id", Integer, primary_key=True),
    Column("order_key", String(80), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending | working | failed
    Column("attempts", Integer, nullable=False),
    Column("due_at", Float, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", Float, nullable=True),
    Column("error", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_webhook_events_active", "order_key", "id", postgresql_where=text(_ACTIVE),
          sqlite_where=text(_ACTIVE)),
)


@dataclass(frozen=True)
class QueuedEvent:
    """One claimed payload (the spool's ``SpoolItem`` counterpart)."""

    id: int
    payload: dict
    attempts: int


def order_key(payload: Mapping[str, Any]) -> str:
    """``annotation:<id>`` for a singular annotation event, else ``project:<id>``."""
    annotation = payload.get("annotation")
    if isinstance(annotation, Mapping) and annotation.get("id") is not None:
        return f"annotation:{annotation['id']}"
    project = payload.get("project")
    if isinstance(project, Mapping):
        project = project.get("id")
    if project is None and isinstance(annotation, Mapping):
        project = annotation.get("project")
    return f"project:{project}"


def _digest(payload: Mapping[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class DbWebhookQueue:
    """Durable, ordered, leased webhook queue in the concept store's database."""

    def __init__(self, engine: Callable[[], Engine], fallback: WebhookSpool,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self._engine_factory = engine
        self._migrated = False
        self.fallback = fallback
        self.lease_seconds = lease_seconds
        self.worker_id = f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    @property
    def engine(self) -> Engine:
        """The database's engine, its tables created or upgraded on first use."""
        engine = self._engine_factory()
        if not self._migrated:
            from ..jobs.schema import upgrade_job_tables

            upgrade_job_tables(engine)
            self._migrated = True
        return engine

    # ------------------------------------------------------------------ writing
    def put(self, payload: dict) -> str:
        """Persist ``payload``; returns its id. Identical waiting payloads are stored once."""
        try:
            return self._insert(payload)
        except Exception as exc:  # noqa: BLE001 - DB down or unreachable: keep it locally
            logger.warning("database unavailable for the webhook queue (%s); payload kept in "
                           "the local spool until it answers", str(exc).splitlines()[0][:200])
            return self.fallback.put(payload)

    def _insert(self, payload: Mapping[str, Any]) -> str:
        digest = _digest(payload)
        with self.engine.begin() as conn:
            waiting = conn.scalar(select(webhook_events.c.id).where(
                webhook_events.c.digest == digest, webhook_events.c.status == "pending"))
            if waiting is None:
                conn.execute(webhook_events.insert().values(
                    order_key=order_key(payload), digest=digest,
                    payload_json=json.dumps(payload, separators=(",", ":")), status="pending",
                    attempts=0, due_at=0.0, error="", created_at=time.time()))
        return digest

    def _drain_fallback(self) -> int:
        """Move payloads spooled while the database was down into the table, oldest first."""
        if self.fallback.depth() == 0:
            return 0
        with self.engine.connect():  # still down: raise before taking anything from the spool
            pass
        moved = 0
        while (item := self.fallback.claim()) is not None:
            try:
                self._insert(item.payload)
            except Exception:
                # Lost the database mid-way: the item goes back (behind the other spooled ones).
                self.fallback.retry(item, 0.0)
                raise
            self.fallback.done(item)
            moved += 1
        if moved:
            logger.info("moved %d spooled webhook payload(s) into the database queue", moved)
        return moved

    # ------------------------------------------------------------------ reading
    def depth(self) -> int:
        """Payloads waiting (in the table, and in the local spool while the database is down)."""
        try:
            with self.engine.connect() as conn:
                n = conn.scalar(select(func.count()).select_from(webhook_events).where(
                    text(_ACTIVE), webhook_events.c.status == "pending"))
        except Exception:  # noqa: BLE001 - database down: only the spool can be counted
            n = 0
        return int(n or 0) + self.fallback.depth()

    def recover(self) -> int:
        """Give back leases that expired (their worker died); returns how many."""
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(update(webhook_events).where(
                    text(_ACTIVE), webhook_events.c.status == "working",
                    webhook_events.c.lease_expires_at < time.time(),
                ).values(status="pending", lease_owner=None, lease_expires_at=None)).rowcount)
        except Exception as exc:  # noqa: BLE001 - retried at the next claim
            logger.warning("cannot recover webhook leases: %s", str(exc).splitlines()[0][:200])
            return 0

    def claim(self) -> QueuedEvent | None:
        """The oldest due event whose key has nothing earlier waiting; None when none is due
        or the database is down (payloads then wait in the local spool)."""
        try:
            self._drain_fallback()
        except Exception as exc:  # noqa: BLE001 - database down: nothing can be applied anyway
            logger.warning("webhook queue: database unavailable (%s); %d payload(s) wait in the "
                           "local spool", str(exc).splitlines()[0][:200], self.fallback.depth())
            return None
        self.recover()
        now = time.time()
        earlier = webhook_events.alias("earlier")
        blocked = exists().where(earlier.c.order_key == webhook_events.c.order_key,
                                 earlier.c.id < webhook_events.c.id,
                                 text("earlier.status IN ('pending', 'working')"))
        pick = (select(webhook_events.c.id)
                .where(text(_ACTIVE), webhook_events.c.status == "pending",
                       webhook_events.c.due_at <= now, ~blocked)
                .order_by(webhook_events.c.id).limit(1))
        with self.engine.begin() as conn:
            row = conn.execute(update_picked(
                webhook_events, pick, conn.dialect.name, webhook_events.c.status == "pending",
                lock_of=webhook_events,
            ).values(status="working", lease_owner=self.worker_id,
                     lease_expires_at=now + self.lease_seconds)
                .returning(webhook_events.c.id, webhook_events.c.payload_json,
                           webhook_events.c.attempts)).first()
        if row is None:
            return None
        return QueuedEvent(int(row.id), json.loads(row.payload_json), int(row.attempts))

    # ------------------------------------------------------------------ outcomes
    def _mine(self, item: QueuedEvent):
        return (webhook_events.c.id == item.id) & (webhook_events.c.lease_owner == self.worker_id)

    def done(self, item: QueuedEvent) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(webhook_events).where(self._mine(item)))

    def retry(self, item: QueuedEvent, delay: float) -> None:
        """Back to waiting, due after ``delay`` seconds, keeping its place in its key's order."""
        with self.engine.begin() as conn:
            conn.execute(update(webhook_events).where(self._mine(item)).values(
                status="pending", attempts=item.attempts + 1, due_at=time.time() + delay,
                lease_owner=None, lease_expires_at=None))

    def fail(self, item: QueuedEvent, reason: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(webhook_events).where(self._mine(item)).values(
                status="failed", error=reason[:4000], lease_owner=None, lease_expires_at=None))
        logger.error("webhook event %s failed permanently: %s", item.id, reason)

    def failed(self) -> list[dict[str, Any]]:
        """The permanently failed payloads with their reasons (for operators and tests)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(webhook_events.c.id, webhook_events.c.error).where(
                webhook_events.c.status == "failed").order_by(webhook_events.c.id)).all()
        return [{"id": int(r.id), "reason": r.error} for r in rows]


def webhook_queue_for(settings, services) -> WebhookSpool | DbWebhookQueue:
    """The database queue on PostgreSQL (replicas share it), the file spool otherwise."""
    spool = WebhookSpool(f"{settings.data_dir}/webhook-spool")
    if not settings.resolved_db_url.startswith(("postgresql", "postgres:")):
        return spool
    return DbWebhookQueue(lambda: services.store.engine, fallback=spool)
