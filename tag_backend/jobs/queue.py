"""The durable pre-labelling queue: jobs, leased task claims, results, retries.

Every state change is one short transaction on the concept store's engine, so any number of
workers (threads, processes, backend replicas) can share one queue:

* **claim** — PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE`` the picked rows
  (concurrent claimers skip each other's rows instead of waiting). SQLite: one atomic
  ``UPDATE ... WHERE status='queued' AND id IN (...) RETURNING id`` inside the store's
  ``BEGIN IMMEDIATE`` transaction (SQLite serialises writers).
* **lease** — a claimed task carries its worker's id and an expiry that the worker renews
  (:meth:`JobQueue.heartbeat`). A killed worker stops renewing; :meth:`JobQueue.expire_leases`
  puts its tasks back (or fails them after ``max_attempts``, so a task that kills workers cannot
  loop forever).
* **complete** — conditional on the lease (``lease_owner = me AND status = 'running'``), so a
  result is recorded once even if a slow worker's lease was taken over meanwhile.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.engine import Engine

from .. import metrics
from .schema import ACTIVE_JOB_STATES, CachedPrediction, Job, JobTask, upgrade_job_tables

logger = logging.getLogger(__name__)


class JobError(Exception):
    """A queue request that cannot be served (unknown job, bad argument)."""


@dataclass(frozen=True)
class QueuePolicy:
    """Leases and retries.

    lease_seconds: how long a claim lives without a heartbeat (a killed worker's tasks are
      re-claimed after this). max_attempts: tries per task (failures and worker deaths).
    backoff_base / backoff_max: retry delay ``base * 2**(attempt-1)``, capped.
    """

    lease_seconds: float = 30.0
    max_attempts: int = 3
    backoff_base: float = 5.0
    backoff_max: float = 300.0

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_base * (2 ** max(attempt - 1, 0)), self.backoff_max)


@dataclass(frozen=True)
class ClaimedTask:
    """A leased task: what the worker needs to compute it."""

    row_id: int
    job_id: int
    ls_task_id: int
    task: dict
    attempts: int
    label_config: str


@dataclass(frozen=True)
class JobProgress:
    """Counts of one job's tasks by state, for progress bars and ``jobs show``."""

    job_id: int
    status: str
    total: int
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    push_pending: int
    pushed: int
    push_gone: int
    push_failed: int

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def settled(self) -> bool:
        """Nothing left to compute or push."""
        return self.queued == 0 and self.running == 0 and self.push_pending == 0


def _now() -> float:
    return time.time()


def task_payload(task: Mapping[str, Any]) -> dict:
    """The part of a Label Studio task the engine needs (id + data), small enough to store."""
    if not isinstance(task, Mapping) or not isinstance(task.get("id"), int):
        raise JobError("a task needs an integer 'id'")
    return {"id": int(task["id"]), "data": dict(task.get("data") or {})}


class JobQueue:
    """The queue on an SQLAlchemy engine (normally ``Store(url).engine``)."""

    def __init__(self, engine: Engine, policy: QueuePolicy = QueuePolicy()) -> None:
        self.engine = engine
        self.policy = policy
        self.dialect = engine.dialect.name
        upgrade_job_tables(engine)

    @classmethod
    def from_store(cls, store, policy: QueuePolicy = QueuePolicy()) -> "JobQueue":
        return cls(store.engine, policy)

    # ------------------------------------------------------------------ jobs
    def create_job(self, kind: str, tasks: Sequence[Mapping[str, Any]], *, label_config: str,
                   model_version: str, project_id: int | None = None, push: bool = True,
                   created_by: str = "", keys: Sequence[str] | None = None) -> int:
        """A new job holding ``tasks`` (in order); returns its id."""
        now = _now()
        with self.engine.begin() as conn:
            job_id = conn.execute(Job.__table__.insert().values(
                kind=kind, project_id=project_id, status="queued", model_version=model_version,
                label_config=label_config, push=int(push), created_at=now, updated_at=now,
                created_by=created_by, note="",
            )).inserted_primary_key[0]
        self.add_tasks(int(job_id), tasks, keys=keys)
        logger.info("job %s created (%s, %d tasks)", job_id, kind, len(tasks),
                    extra={"job_id": job_id, "tasks": len(tasks)})
        return int(job_id)

    def add_tasks(self, job_id: int, tasks: Sequence[Mapping[str, Any]],
                  keys: Sequence[str] | None = None) -> int:
        """Add tasks not yet in the job (idempotent per Label Studio task id); returns how many."""
        payloads = [task_payload(t) for t in tasks]
        if keys is not None and len(keys) != len(payloads):
            raise JobError("keys and tasks differ in length")
        with self.engine.begin() as conn:
            present = set(conn.scalars(select(JobTask.ls_task_id).where(
                JobTask.job_id == job_id,
                JobTask.ls_task_id.in_([p["id"] for p in payloads]))).all()) if payloads else set()
            start = int(conn.scalar(select(func.coalesce(func.max(JobTask.position), -1))
                                    .where(JobTask.job_id == job_id))) + 1
            rows, seen = [], set(present)
            for i, payload in enumerate(payloads):
                if payload["id"] in seen:
                    continue
                seen.add(payload["id"])
                rows.append(dict(job_id=job_id, ls_task_id=payload["id"],
                                 position=start + len(rows),
                                 task_json=json.dumps(payload), status="queued", attempts=0,
                                 cache_key=keys[i] if keys is not None else "", next_at=0.0,
                                 error="", model_version="", push_attempts=0, push_next_at=0.0,
                                 push_error=""))
            if rows:
                conn.execute(JobTask.__table__.insert(), rows)
                conn.execute(update(Job).where(Job.id == job_id, Job.status.in_(("done",)))
                             .values(status="queued", updated_at=_now()))
        return len(rows)

    def get_job(self, job_id: int) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(select(Job).where(Job.id == job_id)).first()
        if row is None:
            raise JobError(f"no job {job_id}")
        return Job(**row._mapping)

    def find_active_job(self, project_id: int, kind: str) -> int | None:
        """The oldest queued/running job of ``kind`` on ``project_id`` (two runs join it)."""
        with self.engine.connect() as conn:
            return conn.scalar(select(Job.id).where(
                Job.project_id == project_id, Job.kind == kind,
                Job.status.in_(ACTIVE_JOB_STATES)).order_by(Job.id).limit(1))

    def list_jobs(self, limit: int = 50) -> list[Job]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Job).order_by(Job.id.desc()).limit(limit)).all()
        return [Job(**r._mapping) for r in rows]

    def cancel(self, job_id: int) -> int:
        """Cancel a job: its queued tasks and pending pushes are dropped; returns tasks dropped."""
        self.get_job(job_id)
        with self.engine.begin() as conn:
            dropped = conn.execute(update(JobTask).where(
                JobTask.job_id == job_id, JobTask.status == "queued").values(status="cancelled")
            ).rowcount
            conn.execute(update(JobTask).where(
                JobTask.job_id == job_id, JobTask.push_status.in_(("pending", "pushing")))
                .values(push_status="skipped"))
            conn.execute(update(Job).where(Job.id == job_id).values(status="cancelled",
                                                                   updated_at=_now()))
        logger.info("job %s cancelled (%d queued tasks dropped)", job_id, dropped)
        return int(dropped)

    # ------------------------------------------------------------------ claims
    def expire_leases(self) -> int:
        """Re-queue tasks whose worker stopped renewing (killed); fail them at the limit."""
        now = _now()
        with self.engine.begin() as conn:
            failed = conn.execute(update(JobTask).where(
                JobTask.status == "running", JobTask.lease_expires_at < now,
                JobTask.attempts >= self.policy.max_attempts,
            ).values(status="failed", lease_owner=None, finished_at=now,
                     error="worker lost its lease on every attempt (crash or kill?)")).rowcount
            back = conn.execute(update(JobTask).where(
                JobTask.status == "running", JobTask.lease_expires_at < now,
            ).values(status="queued", lease_owner=None, next_at=now)).rowcount
        if failed or back:
            logger.warning("expired leases: %d task(s) re-queued, %d failed", back, failed)
            metrics.JOB_TASKS.labels(outcome="failed").inc(failed)
        return int(back + failed)

    def _claimable(self, now: float):
        active_jobs = select(Job.id).where(Job.status.in_(ACTIVE_JOB_STATES))
        return (select(JobTask.id)
                .where(JobTask.status == "queued", JobTask.next_at <= now,
                       JobTask.job_id.in_(active_jobs))
                .order_by(JobTask.job_id, JobTask.position))

    def claim(self, worker_id: str, limit: int) -> list[ClaimedTask]:
        """Lease up to ``limit`` due tasks for ``worker_id`` (oldest job first, in task order)."""
        if limit <= 0:
            return []
        now = _now()
        values = dict(status="running", lease_owner=worker_id,
                      lease_expires_at=now + self.policy.lease_seconds,
                      attempts=JobTask.attempts + 1)
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                ids = conn.scalars(self._claimable(now).limit(limit)
                                   .with_for_update(skip_locked=True, of=JobTask)).all()
                if ids:
                    conn.execute(update(JobTask).where(JobTask.id.in_(ids)).values(**values))
            else:
                ids = conn.scalars(update(JobTask).where(
                    JobTask.status == "queued",
                    JobTask.id.in_(self._claimable(now).limit(limit).scalar_subquery()),
                ).values(**values).returning(JobTask.id)).all()
            if not ids:
                return []
            rows = conn.execute(
                select(JobTask.id, JobTask.job_id, JobTask.ls_task_id, JobTask.task_json,
                       JobTask.attempts, Job.label_config)
                .join(Job, Job.id == JobTask.job_id)
                .where(JobTask.id.in_(ids)).order_by(JobTask.job_id, JobTask.position)).all()
            conn.execute(update(Job).where(Job.id.in_({r.job_id for r in rows}),
                                           Job.status == "queued")
                         .values(status="running", updated_at=now))
        return [ClaimedTask(int(r.id), int(r.job_id), int(r.ls_task_id), json.loads(r.task_json),
                            int(r.attempts), r.label_config) for r in rows]

    def heartbeat(self, worker_id: str) -> int:
        """Renew every lease ``worker_id`` holds (compute and push); returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(update(JobTask).where(
                JobTask.lease_owner == worker_id,
                or_(JobTask.status == "running", JobTask.push_status == "pushing"),
            ).values(lease_expires_at=_now() + self.policy.lease_seconds)).rowcount)

    def release(self, worker_id: str) -> int:
        """Give back this worker's unfinished claims without counting the attempt (Ctrl-C)."""
        with self.engine.begin() as conn:
            n = conn.execute(update(JobTask).where(
                JobTask.lease_owner == worker_id, JobTask.status == "running",
            ).values(status="queued", lease_owner=None, lease_expires_at=None,
                     attempts=JobTask.attempts - 1)).rowcount
            conn.execute(update(JobTask).where(
                JobTask.lease_owner == worker_id, JobTask.push_status == "pushing",
            ).values(push_status="pending", lease_owner=None, lease_expires_at=None))
        return int(n)

    # ------------------------------------------------------------------ results
    def complete(self, claim: ClaimedTask, worker_id: str, item: Mapping[str, Any],
                 cache_key: str) -> bool:
        """Record a finished prediction (once: only while ``worker_id`` holds the lease)."""
        now = _now()
        text = json.dumps(item, separators=(",", ":"))
        version = str(item.get("model_version", ""))
        with self.engine.begin() as conn:
            job = conn.execute(select(Job.push, Job.status).where(Job.id == claim.job_id)).first()
            push = job is not None and job.push and job.status != "cancelled"
            done = conn.execute(update(JobTask).where(
                JobTask.id == claim.row_id, JobTask.lease_owner == worker_id,
                JobTask.status == "running",
            ).values(status="done", result_json=text, model_version=version, finished_at=now,
                     finished_by=worker_id, lease_owner=None, lease_expires_at=None, error="",
                     push_status="pending" if push else "skipped")).rowcount
            if done:
                self._put_cache(conn, cache_key, claim.ls_task_id, version, text, now)
        if not done:
            logger.warning("task %s: lease lost before its result was recorded (another worker "
                           "owns it now): result dropped", claim.ls_task_id)
        return bool(done)

    def _put_cache(self, conn, key: str, ls_task_id: int, version: str, text: str,
                   now: float) -> None:
        if not key:
            return
        conn.execute(delete(CachedPrediction).where(CachedPrediction.cache_key == key))
        conn.execute(CachedPrediction.__table__.insert().values(
            cache_key=key, ls_task_id=ls_task_id, model_version=version, result_json=text,
            created_at=now))

    def fail(self, claim: ClaimedTask, worker_id: str, error: str, *, retry: bool = True) -> str:
        """Record a failed attempt: re-queued with back-off, or failed at the limit / if final."""
        now = _now()
        final = not retry or claim.attempts >= self.policy.max_attempts
        status = "failed" if final else "queued"
        with self.engine.begin() as conn:
            conn.execute(update(JobTask).where(
                JobTask.id == claim.row_id, JobTask.lease_owner == worker_id,
                JobTask.status == "running",
            ).values(status=status, error=error[:2000], lease_owner=None, lease_expires_at=None,
                     next_at=now + self.policy.backoff(claim.attempts),
                     finished_at=now if final else None))
        return status

    def cached(self, keys: Iterable[str]) -> dict[str, dict]:
        """Stored predictions by cache key (the keys embed the model_version)."""
        wanted = [k for k in set(keys) if k]
        if not wanted:
            return {}
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                for key, text in conn.execute(select(CachedPrediction.cache_key,
                                                     CachedPrediction.result_json)
                                              .where(CachedPrediction.cache_key.in_(
                                                  wanted[i:i + 500]))):
                    out[key] = json.loads(text)
        return out

    def pending_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` are already queued or running in an active job (do not re-queue)."""
        wanted = [k for k in set(keys) if k]
        if not wanted:
            return set()
        with self.engine.connect() as conn:
            return set(conn.scalars(select(JobTask.cache_key).join(Job, Job.id == JobTask.job_id)
                                    .where(JobTask.cache_key.in_(wanted),
                                           JobTask.status.in_(("queued", "running")),
                                           Job.status.in_(ACTIVE_JOB_STATES))).all())

    # ------------------------------------------------------------------ progress
    def progress(self, job_id: int) -> JobProgress:
        job = self.get_job(job_id)
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(select(JobTask.status, func.count()).where(
                JobTask.job_id == job_id).group_by(JobTask.status)).all())
            by_push = dict(conn.execute(select(JobTask.push_status, func.count()).where(
                JobTask.job_id == job_id, JobTask.push_status.is_not(None))
                .group_by(JobTask.push_status)).all())
        return JobProgress(
            job_id=job_id, status=job.status, total=sum(by_status.values()),
            queued=by_status.get("queued", 0), running=by_status.get("running", 0),
            done=by_status.get("done", 0), failed=by_status.get("failed", 0),
            cancelled=by_status.get("cancelled", 0),
            push_pending=by_push.get("pending", 0) + by_push.get("pushing", 0),
            pushed=by_push.get("pushed", 0), push_gone=by_push.get("gone", 0),
            push_failed=by_push.get("failed", 0))

    def failures(self, job_id: int, limit: int = 20) -> list[tuple[int, str]]:
        """(Label Studio task id, reason) of failed tasks and pushes."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(JobTask.ls_task_id, JobTask.error, JobTask.push_error)
                                .where(JobTask.job_id == job_id, or_(
                                    JobTask.status == "failed",
                                    JobTask.push_status.in_(("failed", "gone"))))
                                .order_by(JobTask.position).limit(limit)).all()
        return [(int(r[0]), r[1] or r[2]) for r in rows]

    def depth(self) -> int:
        """Tasks waiting or running in active jobs (the ``tag_queue_depth`` gauge)."""
        with self.engine.connect() as conn:
            n = int(conn.scalar(select(func.count()).select_from(JobTask).join(
                Job, Job.id == JobTask.job_id).where(
                JobTask.status.in_(("queued", "running")),
                Job.status.in_(ACTIVE_JOB_STATES))) or 0)
        metrics.QUEUE_DEPTH.labels(queue="prelabel").set(n)
        return n

    def finish_settled_jobs(self) -> list[int]:
        """Mark active jobs with nothing left to compute or push as done."""
        busy = select(JobTask.job_id).where(or_(
            JobTask.status.in_(("queued", "running")),
            JobTask.push_status.in_(("pending", "pushing"))))
        with self.engine.begin() as conn:
            ids = conn.scalars(select(Job.id).where(and_(
                Job.status.in_(ACTIVE_JOB_STATES), Job.id.not_in(busy)))).all()
            if ids:
                conn.execute(update(Job).where(Job.id.in_(ids)).values(status="done",
                                                                       updated_at=_now()))
        for job_id in ids:
            logger.info("job %s finished", job_id, extra={"job_id": job_id})
        return list(ids)
