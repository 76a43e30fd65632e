"""Claiming rows of a work table: ``UPDATE`` exactly the rows a ``SELECT id ... LIMIT n`` picks.

Shared by the job queue and the webhook queue. On PostgreSQL the pick is a ``MATERIALIZED``
CTE locked ``FOR UPDATE SKIP LOCKED``: evaluated exactly once, so its ``LIMIT`` holds (an
``IN (sub-select)`` may be re-run by the planner and update more rows than picked), and
concurrent claimers skip each other's rows instead of waiting. SQLite serialises writers, so
the plain ``IN (sub-select)`` is atomic there; ``conditions`` re-check the rows inside the
update on both.
"""
from __future__ import annotations

from sqlalchemy import Table, update
from sqlalchemy.sql import ColumnElement, Select


def update_picked(table: Table, pick: Select, dialect: str, *conditions: ColumnElement[bool],
                  lock_of=None):
    """``UPDATE table`` of the rows whose ``id`` ``pick`` selects (see the module doc)."""
    if dialect == "postgresql":
        picked = pick.with_for_update(skip_locked=True, of=lock_of).cte("picked") \
            .prefix_with("MATERIALIZED")
        return update(table).where(table.c.id == picked.c.id, *conditions)
    return update(table).where(table.c.id.in_(pick.scalar_subquery()), *conditions)
