"""Shared fixtures of the job-engine tests: a queue on SQLite and on a real PostgreSQL.

The PostgreSQL server and the SQLite/PostgreSQL parametrisation come from tests/pg_server.py.
"""
from __future__ import annotations

import pytest


@pytest.fixture()
def jobs_db_url(db_url) -> str:
    """A fresh database URL, once SQLite, once PostgreSQL (tests/pg_server.py)."""
    return db_url


@pytest.fixture()
def jobs_store(store):
    return store


def make_queue(store, **policy):
    from tag_backend.jobs.queue import JobQueue, QueuePolicy

    return JobQueue.from_store(store, QueuePolicy(**policy))


def tasks(n: int, start: int = 1) -> list[dict]:
    return [{"id": i, "data": {"image": f"/data/upload/1/img{i}.png"}}
            for i in range(start, start + n)]


def previous_release_tables(engine) -> None:
    """The job tables as the previous release's store revision 0002 created them (the DDL of
    jobs_0001), without the job tables' own version table."""
    from alembic import command
    from sqlalchemy import text

    from database_tools.migrate import alembic_config
    from tag_backend.jobs.schema import JOB_MIGRATIONS

    cfg = alembic_config(JOB_MIGRATIONS)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "jobs_0001")
        conn.execute(text(f"DROP TABLE {JOB_MIGRATIONS.version_table}"))
