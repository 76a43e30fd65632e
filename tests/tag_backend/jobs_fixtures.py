"""Shared fixtures of the job-engine tests: a queue on SQLite and on a real PostgreSQL.

The PostgreSQL server comes from the store tests' fixture module (tests/database_tools/
conftest.py), loaded by path so it is reused, not duplicated.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "_tag_store_fixtures", Path(__file__).resolve().parents[1] / "database_tools" / "conftest.py")
store_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(store_fixtures)

postgres_server = store_fixtures.postgres_server
new_pg_database = store_fixtures.new_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def jobs_db_url(request, tmp_path) -> str:
    """A fresh database URL, once SQLite, once PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


@pytest.fixture()
def jobs_store(jobs_db_url):
    from database_tools.store import Store

    store = Store(jobs_db_url)
    yield store
    store.close()


def make_queue(store, **policy):
    from tag_backend.jobs.queue import JobQueue, QueuePolicy

    return JobQueue.from_store(store, QueuePolicy(**policy))


def tasks(n: int, start: int = 1) -> list[dict]:
    return [{"id": i, "data": {"image": f"/data/upload/1/img{i}.png"}}
            for i in range(start, start + n)]
