"""Alembic environment of the job-queue tables, run by ``tag_backend.jobs.schema``.

The tables share the concept store's database but not its schema history: their revisions are
recorded in their own version table, so the store's migrations and these never depend on each
other. The caller passes its connection in ``config.attributes["connection"]``.
"""
from __future__ import annotations

from alembic import context

from tag_backend.jobs.schema import JOB_MIGRATIONS, JobsBase

target_metadata = JobsBase.metadata


def run_migrations_online() -> None:
    """Migrate the connection handed over, inside its transaction."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("job-table migrations run only through tag_backend.jobs.schema")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=JOB_MIGRATIONS.version_table,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
