"""Claiming rows of a work table: ``UPDATE`` exactly the rows a ``SELECT id ... LIMIT n`` picks.

Shared by the job queue and the webhook queue. On PostgreSQL the pick is a ``MATERIALIZED``
CTE locked ``FOR UPDATE SKIP LOCKED``: evaluated exactly once, so its ``LIMIT`` holds (an
``IN (sub-select)`` may be re-run by the planner and update more rows than picked), and
concurrent claimers skip each other's rows instead of waiting. SQLite serialises writers, so
the plain ``IN (sub-select)`` is atomic there; ``conditions`` re-check the rows inside the
update on both.
"""
from __future__ import annotations

from sqlalchemy import Table, func, update
from sqlalchemy.sql import ColumnElement, Select


def update_picked(table: Table, pick: Select, dialect: str, *conditions: ColumnElement[bool],
                  lock_of=None):
    """``UPDATE table`` of the rows whose ``id`` ``pick`` selects (see the module doc)."""
    if dialect == "postgresql":
        picked = pick.with_for_update(skip_locked=True, of=lock_of).cte("picked") \
            .prefix_with("MATERIALIZED")
        return update(table).where(table.c.id == picked.c.id, *conditions)
    return update(table).where(table.c.id.in_(pick.scalar_subquery()), *conditions)


def unflushed_commit(dialect: str) -> list[ColumnElement]:
    """``RETURNING`` columns that let a PostgreSQL statement's own commit skip the WAL flush.

    ``set_config('synchronous_commit', 'off', true)`` is the function form of ``SET LOCAL``:
    it holds for the current transaction only, and PostgreSQL decides at commit time whether
    to wait for the WAL flush (the ``synchronous_commit`` documentation: "the behavior for any
    one transaction is determined by the setting in effect when it commits"). Run in
    autocommit mode, the statement is its own transaction, so its commit does not wait for an
    fsync (several milliseconds on ordinary disks) and nothing else on the connection is
    affected. Evaluated once per returned row, i.e. whenever the statement changed a row.

    Only for writes whose loss in a database crash is harmless: the commit is visible at once
    and reaches disk within ``3 x wal_writer_delay`` (600 ms by default); a crash before that
    undoes it as if it never ran, never partially, and any later durable commit that depends on
    it flushes it too (the WAL is flushed in order). Empty on SQLite, whose commits keep their
    durability.
    """
    if dialect != "postgresql":
        return []
    return [func.set_config("synchronous_commit", "off", True).label("unflushed_commit")]
