"""Alembic environment: run programmatically by ``Store`` with a live connection.

``Store`` passes its connection in ``config.attributes["connection"]``; there is no alembic.ini
and no URL here, so migrations always act on the database the store opened.
"""
from __future__ import annotations

from alembic import context

from database_tools.schema import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    """Migrate the connection the store handed over, inside its transaction."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("database_tools migrations run only through database_tools.Store")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
