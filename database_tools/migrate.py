"""Run the Alembic migrations programmatically (no alembic.ini), refusing newer schemas."""
from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine

from .errors import SchemaTooNew

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
READONLY_OPTION = "tag_readonly"  # read sessions: deferred BEGIN, never take SQLite's write lock
_PG_LOCK_KEY = 724_118_203  # advisory lock id: concurrent openers migrate one at a time


def alembic_config() -> Config:
    """Alembic config pointing at the migrations shipped inside the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """Newest schema revision this code knows (the bundle manifest's schema version)."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found in " + str(MIGRATIONS_DIR))
    return head


def known_revisions() -> set[str]:
    """Every revision id of the shipped migrations."""
    script = ScriptDirectory.from_config(alembic_config())
    return {rev.revision for rev in script.walk_revisions()}


def current_revision(conn: Connection) -> str | None:
    """The schema revision recorded in the database (None for an empty database)."""
    return MigrationContext.configure(conn).get_current_revision()


def migrate_to_head(engine: Engine) -> None:
    """Upgrade the database to :func:`head_revision` in one transaction.

    Raises :class:`SchemaTooNew` when the database has a revision this code does not know
    (it was migrated by a newer release) rather than guessing at its layout.
    """
    head = head_revision()
    with engine.execution_options(**{READONLY_OPTION: True}).connect() as conn:
        current = current_revision(conn)  # cheap check first: no write lock when up to date
    _refuse_unknown(current, head)
    if current == head:
        return
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        current = current_revision(conn)  # again, under the lock: another opener may have won
        _refuse_unknown(current, head)
        if current == head:
            return
        logger.info("migrating concept store from %s to %s", current or "empty", head)
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:
            raise SchemaTooNew(f"cannot migrate database schema: {exc}") from None


def _refuse_unknown(current: str | None, head: str) -> None:
    if current is not None and current != head and current not in known_revisions():
        raise SchemaTooNew(
            f"database schema revision {current!r} is newer than this code "
            f"(newest known: {head!r}); upgrade tag-backend"
        )
