"""Run Alembic migrations programmatically (no alembic.ini), refusing newer schemas.

A database may hold more than one independently versioned schema: the concept store's (this
package's ``migrations``) and those of applications that keep their own tables next to it (the
engine's job queue). Each is a :class:`MigrationSet` with its own Alembic version table, so one
never needs to know the other's revisions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, MetaData

from .errors import SchemaTooNew

logger = logging.getLogger(__name__)

READONLY_OPTION = "tag_readonly"  # read sessions: deferred BEGIN, never take SQLite's write lock


@dataclass(frozen=True)
class MigrationSet:
    """One versioned schema: its Alembic scripts, version table and PostgreSQL advisory lock.

    The ``env.py`` under ``script_location`` must configure Alembic with the same
    ``version_table`` (it receives the live connection in ``config.attributes["connection"]``).
    """

    name: str
    script_location: Path
    version_table: str
    lock_key: int  # advisory lock id: concurrent openers migrate one at a time


STORE_MIGRATIONS = MigrationSet("concept store", Path(__file__).with_name("migrations"),
                                "alembic_version", 724_118_203)


def alembic_config(migrations: MigrationSet = STORE_MIGRATIONS) -> Config:
    """Alembic config pointing at the migration scripts of ``migrations``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations.script_location))
    return cfg


def head_revision(migrations: MigrationSet = STORE_MIGRATIONS) -> str:
    """Newest revision this code knows (for the store: the bundle manifest's schema version)."""
    head = ScriptDirectory.from_config(alembic_config(migrations)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {migrations.script_location}")
    return head


def known_revisions(migrations: MigrationSet = STORE_MIGRATIONS) -> set[str]:
    """Every revision id of the shipped migrations."""
    script = ScriptDirectory.from_config(alembic_config(migrations))
    return {rev.revision for rev in script.walk_revisions()}


def current_revision(conn: Connection, migrations: MigrationSet = STORE_MIGRATIONS) -> str | None:
    """The revision recorded in the database (None when this schema was never created)."""
    context = MigrationContext.configure(conn, opts={"version_table": migrations.version_table})
    return context.get_current_revision()


def migrate_to_head(engine: Engine, migrations: MigrationSet = STORE_MIGRATIONS) -> None:
    """Upgrade the database to :func:`head_revision` of ``migrations`` in one transaction.

    Raises :class:`SchemaTooNew` when the database has a revision this code does not know
    (it was migrated by a newer release) rather than guessing at its layout.
    """
    head = head_revision(migrations)
    with engine.execution_options(**{READONLY_OPTION: True}).connect() as conn:
        current = current_revision(conn, migrations)  # cheap check: no write lock when current
    _refuse_unknown(current, head, migrations)
    if current == head:
        return
    cfg = alembic_config(migrations)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({migrations.lock_key})")
        current = current_revision(conn, migrations)  # again, under the lock: another opener
        _refuse_unknown(current, head, migrations)    # may have won
        if current == head:
            return
        logger.info("migrating %s schema from %s to %s", migrations.name, current or "empty", head)
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:
            raise SchemaTooNew(f"cannot migrate {migrations.name} schema: {exc}") from None


def run_env(context: Any, target_metadata: MetaData, migrations: MigrationSet) -> None:
    """The body of a migrations ``env.py``: migrate the connection :func:`migrate_to_head` hands
    over in ``config.attributes["connection"]``, inside its transaction (no alembic.ini, no URL,
    no offline SQL scripts)."""
    if context.is_offline_mode():
        raise RuntimeError("offline (SQL script) migrations are not supported")
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(f"the {migrations.name} migrations run only through migrate_to_head")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=migrations.version_table,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _refuse_unknown(current: str | None, head: str, migrations: MigrationSet) -> None:
    if current is not None and current != head and current not in known_revisions(migrations):
        raise SchemaTooNew(
            f"database {migrations.name} schema revision {current!r} is newer than this code "
            f"(newest known: {head!r}); upgrade tag-backend"
        )
