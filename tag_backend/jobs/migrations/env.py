"""Alembic environment of the job-queue tables, run by ``tag_backend.jobs.schema``.

The tables share the concept store's database but not its schema history: their revisions are
recorded in their own version table, so the store's migrations and these never depend on each
other.
"""
from __future__ import annotations

from alembic import context

from database_tools.migrate import run_env
from tag_backend.jobs.schema import JOB_MIGRATIONS, JobsBase

run_env(context, JobsBase.metadata, JOB_MIGRATIONS)
