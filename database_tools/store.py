"""The concept store: one SQLite file or PostgreSQL database, migrated on open.

Every write runs in one transaction (:meth:`Store.write`). Content changes bump a single
counter (``db_version``) first, which serialises writers on PostgreSQL (row lock) and gives each
transaction a sequence number stored in ``entries.updated_seq`` so the index can update
incrementally. SQLite uses WAL, ``busy_timeout`` and ``BEGIN IMMEDIATE`` for the same effect.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, and_, create_engine, event, func, select, tuple_
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from .errors import StoreUnavailable
from .migrate import READONLY_OPTION, migrate_to_head
from .schema import Alias, Entry, Exemplar, IndexVersion, Meta, utcnow
from .txn import Txn

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 60_000


def normalize_url(url: str) -> str:
    """Accept ``postgresql://``/``postgres://`` and use the installed psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def mask_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


@dataclass(frozen=True)
class EntryChange:
    """An entry whose indexable state (text or status) changed after some sequence number."""

    entry_id: int
    kind: str
    text: str
    status: str
    updated_seq: int


def _make_engine(url: str, pool_size: int | None = None,
                 max_overflow: int | None = None) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    pool: dict[str, int] = {}
    if pool_size is not None:
        pool["pool_size"] = pool_size
    if max_overflow is not None:
        pool["max_overflow"] = max_overflow
    return create_engine(url, connect_args=_server_connect_args(parsed), pool_pre_ping=True,
                         **pool)


def _server_connect_args(parsed) -> dict[str, Any]:
    return {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}


#: Connections of a :func:`single_statement_engine`: kept open / opened beyond under load.
SINGLE_STATEMENT_POOL = (2, 2)


def single_statement_engine(engine: Engine) -> Engine:
    """A small second engine on ``engine``'s server database for a few hot statements that are
    each their own transaction: autocommit connections, handed out **without a pre-ping**.

    The store's pool pings every connection it hands out (one more round trip, ``;``, so that
    a database restart costs no failed call); on the job queue's claim that round trip cost
    as much as the claim itself. Here a dead connection is found by the statement itself:
    SQLAlchemy recognises the disconnect, invalidates the connection (and every older one in
    this pool), and :func:`run_single_statement` runs the statement once more on a fresh
    connection. At most ``sum(SINGLE_STATEMENT_POOL)`` connections, opened on first use.
    Disposed with ``engine``.
    """
    size, overflow = SINGLE_STATEMENT_POOL
    single = create_engine(engine.url, connect_args=_server_connect_args(engine.url),
                           isolation_level="AUTOCOMMIT", pool_pre_ping=False, pool_size=size,
                           max_overflow=overflow)
    event.listen(engine, "engine_disposed", lambda _engine: single.dispose())
    return single


def run_single_statement(engine: Engine, statement: Any, parameters: dict[str, Any]) -> list:
    """The rows of ``statement`` run on a :func:`single_statement_engine`; run once more on a
    fresh connection if the first one turned out to be dead.

    Only for statements whose second run is harmless even if the first one committed before
    its connection died (the caller says why for each).
    """
    try:
        with engine.connect() as conn:
            return conn.execute(statement, parameters).all()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        logger.info("database connection lost; running the statement again on a new one")
    with engine.connect() as conn:
        return conn.execute(statement, parameters).all()


def _configure_sqlite(engine: Engine) -> None:
    """WAL + busy timeout, and BEGIN IMMEDIATE so concurrent writers wait instead of failing."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cur)
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(READONLY_OPTION)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _enable_wal(cur: Any) -> None:
    """Switch the file to WAL, waiting out other connections doing the same.

    Changing the journal mode of a new (rollback-journal) file needs an exclusive lock, and
    SQLite answers SQLITE_BUSY at once, without calling the busy handler, when two connections
    that both hold a shared lock try to upgrade (its deadlock avoidance). Several processes
    opening a fresh file together hit exactly that, so the switch is retried until
    ``SQLITE_BUSY_TIMEOUT_MS``. Once a file is in WAL mode the setting is persistent and the
    pragma only reads it.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 0.25)


class Store:
    """Concept/caption store at ``url`` (``sqlite:///file.db`` or ``postgresql://...``).

    :param url: SQLAlchemy URL; ``postgresql://`` is mapped to the psycopg 3 driver.
    :param migrate: run the Alembic migrations to the newest schema (refuses a newer schema).
    :param pool_size, max_overflow: connection pool of a server database (SQLAlchemy's
        ``QueuePool``; default 5 + 10): at most ``pool_size + max_overflow`` connections per
        process. Ignored for SQLite.
    """

    def __init__(self, url: str, *, migrate: bool = True, pool_size: int | None = None,
                 max_overflow: int | None = None) -> None:
        self.url = normalize_url(url)
        self.safe_url = mask_url(self.url)
        try:
            self.engine = _make_engine(self.url, pool_size, max_overflow)
            with self.engine.execution_options(**{READONLY_OPTION: True}).connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                conn.rollback()
        except (DBAPIError, ArgumentError, NoSuchModuleError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot connect to {self.safe_url}: {self._reason(exc)}"
            ) from None
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READONLY_OPTION: True}), expire_on_commit=False
        )
        if migrate:
            migrate_to_head(self.engine)

    def _reason(self, exc: BaseException) -> str:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        text = reason[0] if reason else type(exc).__name__
        password = make_url(self.url).password if "://" in self.url else None
        return text.replace(str(password), "***") if password else text

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:  # noqa: PYI034 (Store is not subclassed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ---------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction: committed on success, rolled back on any exception."""
        with self._sessions.begin() as session:
            yield Txn(session)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A short read session (objects stay readable after it closes)."""
        with self._read_sessions() as session:
            yield session

    # -- versions -------------------------------------------------------------------------
    def db_version(self) -> int:
        """Content version: grows on every import, correction and curation that changed data."""
        with self.read() as session:
            return int(session.scalar(select(Meta.db_version).where(Meta.id == 1)) or 0)

    # -- entries --------------------------------------------------------------------------
    def iter_entries(
        self,
        kinds: Sequence[str] = ("caption", "concept"),
        statuses: Sequence[str] = ("active",),
        batch_size: int = 10_000,
    ) -> Iterator[list[tuple[int, str, str]]]:
        """Yield ``[(entry_id, kind, text), ...]`` batches ordered by id (bounded memory)."""
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        last = 0
        while True:
            with self.read() as session:
                rows = session.execute(
                    select(Entry.id, Entry.kind, Entry.text)
                    .where(Entry.kind.in_(kinds), Entry.status.in_(statuses), Entry.id > last)
                    .order_by(Entry.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            yield [(int(r[0]), r[1], r[2]) for r in rows]
            last = int(rows[-1][0])

    def count_entries(
        self, kinds: Sequence[str] = ("caption", "concept"), statuses: Sequence[str] = ("active",)
    ) -> int:
        """How many entries :meth:`iter_entries` would yield (for progress bars)."""
        with self.read() as session:
            return int(
                session.scalar(
                    select(func.count(Entry.id)).where(
                        Entry.kind.in_(kinds), Entry.status.in_(statuses)
                    )
                )
                or 0
            )

    def entries_since(
        self, seq: int, kinds: Sequence[str] = ("caption", "concept"), batch_size: int = 10_000
    ) -> Iterator[list[EntryChange]]:
        """Entries created or whose text/status changed after ``seq`` (a past ``db_version``).

        The index adds those now ``active`` (re-embedding ones whose text changed) and drops
        the others; support-count changes do not appear here because they do not change it.

        Batches come in ``(updated_seq, id)`` order through the sequence index, so the cost is
        that of the changes, not of the table: a refresh after each correction reads a few rows
        out of millions. ``kinds`` is filtered here rather than in SQL because, without
        statistics (the store never runs ``ANALYZE``), SQLite prefers the ``(kind, norm)``
        index's equality and scans every entry of a kind instead (measured: 8 ms per refresh at
        20,000 entries, growing with the table).
        """
        wanted = set(kinds)
        seq_from, id_from = int(seq), None  # the last row of the previous batch
        while True:
            after = (Entry.updated_seq > seq_from if id_from is None else
                     and_(Entry.updated_seq >= seq_from,
                          tuple_(Entry.updated_seq, Entry.id) > tuple_(seq_from, id_from)))
            with self.read() as session:
                rows = session.execute(
                    select(Entry.id, Entry.kind, Entry.text, Entry.status, Entry.updated_seq)
                    .where(after)
                    .order_by(Entry.updated_seq, Entry.id)
                    .limit(batch_size)
                ).all()
            if not rows:
                return
            batch = [EntryChange(int(r[0]), r[1], r[2], r[3], int(r[4])) for r in rows
                     if r[1] in wanted]
            if batch:
                yield batch
            seq_from, id_from = int(rows[-1][4]), int(rows[-1][0])

    def snapshot_hash(
        self, kinds: Sequence[str] = ("caption", "concept"), statuses: Sequence[str] = ("active",)
    ) -> str:
        """sha256 over the (id, kind, text) of the selected entries: equal iff same content."""
        digest = hashlib.sha256()
        for batch in self.iter_entries(kinds, statuses, batch_size=20_000):
            for entry_id, kind, text in batch:
                digest.update(f"{entry_id}\t{kind}\t{text}\n".encode())
        return digest.hexdigest()

    # -- exemplars ------------------------------------------------------------------------
    def load_exemplars(self, encoder_id: str) -> tuple[list[str], np.ndarray]:
        """Names and ``(n, dim)`` float32 embeddings of active concepts' served exemplars."""
        with self.read() as session:
            rows = session.execute(
                select(Entry.text, Exemplar.dim, Exemplar.vector)
                .join(Entry, Entry.id == Exemplar.entry_id)
                .where(Exemplar.encoder_id == encoder_id, Entry.status == "active",
                       Exemplar.served.is_(True))
                .order_by(Exemplar.id)
            ).all()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        dims = {int(r[1]) for r in rows}
        if len(dims) != 1:
            raise ValueError(f"exemplars of encoder {encoder_id!r} have mixed dims {sorted(dims)}")
        vectors = np.stack([np.frombuffer(r[2], dtype=np.float32) for r in rows])
        return [r[0] for r in rows], vectors.astype(np.float32, copy=False)

    def load_aliases(self, min_count: int = 1) -> dict[str, tuple[str, int, int]]:
        """Predicted-name (normalised) -> (corrected active concept, count, its entry id), the
        most frequent correction per predicted name, only those corrected ``min_count`` times."""
        with self.read() as session:
            rows = session.execute(
                select(Alias.norm, Entry.text, Alias.count, Entry.id)
                .join(Entry, Entry.id == Alias.entry_id)
                .where(Entry.status == "active", Alias.count >= min_count)
                .order_by(Alias.count.desc(), Alias.id)
            ).all()
        aliases: dict[str, tuple[str, int, int]] = {}
        for norm, text, count, entry_id in rows:
            aliases.setdefault(norm, (text, int(count), int(entry_id)))
        return aliases

    # -- index versions -------------------------------------------------------------------
    def record_index_version(
        self,
        encoder_id: str,
        version: str,
        *,
        path: str = "",
        snapshot_hash: str = "",
        db_version: int = 0,
        count: int = 0,
        manifest: dict[str, Any] | None = None,
    ) -> int:
        """Remember a built index version (not a content change: ``db_version`` stays)."""
        with self.write() as txn:
            row = IndexVersion(
                encoder_id=encoder_id, version=version, path=path, snapshot_hash=snapshot_hash,
                db_version=db_version, count=count, manifest=json.dumps(manifest or {}),
                created_at=utcnow(),
            )
            txn.session.add(row)
            txn.session.flush()
            return int(row.id)
