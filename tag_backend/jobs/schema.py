"""Tables of the pre-labelling job queue, kept in the concept store's database.

They live in the same database as the concepts (SQLite by default, PostgreSQL when
``TAG_DB_URL`` says so) so every backend replica sees one queue, but they are the job engine's:
their own Alembic migrations (``tag_backend/jobs/migrations``, version table
``tag_jobs_alembic_version``) create and upgrade them when a queue is opened
(:func:`upgrade_job_tables`); the concept store's migrations know nothing about them.

Times are float Unix seconds: leases and back-off compare them with ``time.time()`` on every
dialect without timezone surprises.

Indexes are **partial** (PostgreSQL and SQLite): each covers only the rows one query needs —
queued tasks for the claim, leased rows for heartbeats and expiry, pending pushes, active cache
keys — so their size and the cost of every periodic query follow the active work, not the
number of finished tasks. SQLite uses a partial index only when the query repeats its predicate
with the same literal values, so queries build their filters from the ``*_PREDICATE`` texts
below rather than from bound parameters.
"""
from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from database_tools.migrate import MigrationSet, migrate_to_head

#: Job states. A job is "active" while queued or running.
JOB_STATES = ("queued", "running", "done", "cancelled")
ACTIVE_JOB_STATES = ("queued", "running")
#: Task states: queued -> running (leased) -> done | failed | cancelled.
TASK_STATES = ("queued", "running", "done", "failed", "cancelled")
#: Job kinds: a ``prelabel`` run, the rest of a ``/predict`` that did not fit its budget, and a
#: ``prelabel --refresh`` run (its results are pushed only when they differ from what Label
#: Studio shows).
PRELABEL, PREDICT, REFRESH = "prelabel", "predict", "refresh"
#: Push states of a finished task: pending -> pushed | gone (task deleted) | failed | skipped
#: (nothing to push to); unchanged: a refresh recomputed what Label Studio already shows.
PUSH_STATES = ("pending", "pushed", "gone", "failed", "skipped", "unchanged")


#: Partial-index predicates, shared verbatim by the index definitions and the queries.
QUEUED_PREDICATE = "status = 'queued'"
LEASED_PREDICATE = "lease_owner IS NOT NULL"
PUSH_PENDING_PREDICATE = "push_status = 'pending'"
ACTIVE_KEY_PREDICATE = ("status IN ('queued', 'running') "
                        "OR push_status IN ('pending', 'pushing')")
PROBLEM_PREDICATE = "status = 'failed' OR push_status IN ('failed', 'gone')"


def predicate(sql: str) -> ColumnElement[bool]:
    """A partial-index predicate as a query filter on ``prelabel_tasks`` (literal values).

    Column names are qualified so the filter stays unambiguous in joins with ``prelabel_jobs``
    (which has a ``status`` too); both databases match it to the index's unqualified predicate.
    """
    return text("(" + re.sub(r"\b(status|lease_owner|push_status)\b", r"prelabel_tasks.\1", sql)
                + ")")


def _partial(name: str, *columns: str, where: str) -> Index:
    return Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))


class JobsBase(DeclarativeBase):
    """Declarative base of the job tables (separate from the concept store's schema)."""


class Job(JobsBase):
    """One pre-labelling job: a set of Label Studio tasks of one project."""

    __tablename__ = "prelabel_jobs"
    __table_args__ = (Index("ix_prelabel_jobs_project_status", "project_id", "status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # PRELABEL | PREDICT | REFRESH
    project_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    model_version: Mapped[str] = mapped_column(Text, nullable=False, default="")
    label_config: Mapped[str] = mapped_column(Text, nullable=False, default="")
    push: Mapped[int] = mapped_column(Integer, nullable=False, default=1)  # 1: push to LS
    created_at: Mapped[float] = mapped_column(Float, nullable=False)
    updated_at: Mapped[float] = mapped_column(Float, nullable=False)
    created_by: Mapped[str] = mapped_column(Text, nullable=False, default="")
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")


class JobTask(JobsBase):
    """One Label Studio task inside a job, with its lease, attempts and push state.

    The result itself is stored once, in :class:`CachedPrediction` under ``cache_key`` (set to
    the key of the recorded result when the task finishes).
    """

    __tablename__ = "prelabel_tasks"
    __table_args__ = (
        UniqueConstraint("job_id", "ls_task_id", name="uq_prelabel_tasks_job_task"),
        _partial("ix_prelabel_tasks_queued", "job_id", "position", where=QUEUED_PREDICATE),
        _partial("ix_prelabel_tasks_lease_owner", "lease_owner", where=LEASED_PREDICATE),
        _partial("ix_prelabel_tasks_lease_expiry", "lease_expires_at", where=LEASED_PREDICATE),
        _partial("ix_prelabel_tasks_push_pending", "job_id", "push_next_at",
                 where=PUSH_PENDING_PREDICATE),
        _partial("ix_prelabel_tasks_active_key", "cache_key", where=ACTIVE_KEY_PREDICATE),
        _partial("ix_prelabel_tasks_problems", "job_id", "position", where=PROBLEM_PREDICATE),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("prelabel_jobs.id", ondelete="CASCADE"), nullable=False
    )
    ls_task_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    task_json: Mapped[str] = mapped_column(Text, nullable=False)
    cache_key: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="queued")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_at: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    model_version: Mapped[str] = mapped_column(Text, nullable=False, default="")
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    push_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    push_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    push_next_at: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    push_error: Mapped[str] = mapped_column(Text, nullable=False, default="")


class CachedPrediction(JobsBase):
    """A finished prediction, found again by ``/predict`` for the same task, config and version.

    The only copy of a job's result: dropped once Label Studio confirmed its push (Label Studio
    then holds it and skips the task for this ``model_version``), otherwise kept until
    ``tag-backend jobs purge``.
    """

    __tablename__ = "prelabel_predictions"
    __table_args__ = (Index("ix_prelabel_predictions_created", "created_at"),)
    cache_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    ls_task_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    model_version: Mapped[str] = mapped_column(Text, nullable=False)
    result_json: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)


#: The job tables' own schema history (see the module docstring).
JOB_MIGRATIONS = MigrationSet("job queue", Path(__file__).with_name("migrations"),
                              "tag_jobs_alembic_version", 724_118_204)


def upgrade_job_tables(engine: Engine) -> None:
    """Create or upgrade the job tables to the newest revision (cheap when they are current;
    concurrent openers migrate one at a time; a newer revision raises ``SchemaTooNew``)."""
    migrate_to_head(engine, JOB_MIGRATIONS)
