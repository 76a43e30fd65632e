"""The durable pre-labelling queue: jobs, leased task claims, results, retries.

Every state change is one short transaction on the concept store's engine, so any number of
workers (threads, processes, backend replicas) can share one queue:

* **claim** — PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` then ``UPDATE`` the picked rows
  (concurrent claimers skip each other's rows instead of waiting), one statement sent in
  autocommit mode whose commit does not wait for an fsync (see :meth:`JobQueue.claim` for why
  losing it in a database crash is harmless). SQLite: one atomic
  ``UPDATE ... WHERE status='queued' AND id IN (...) RETURNING id`` inside the store's
  ``BEGIN IMMEDIATE`` transaction (SQLite serialises writers).
* **lease** — a claimed task carries its worker's id and an expiry that the worker renews
  (:meth:`JobQueue.heartbeat`, one statement whose commit does not wait for an fsync either).
  A killed worker stops renewing; :meth:`JobQueue.expire_leases` puts its tasks back (or fails
  them after ``max_attempts``, so a task that kills workers cannot loop forever).
* **complete** — conditional on the lease (``lease_owner = me AND status = 'running'``), so a
  result is recorded once even if a slow worker's lease was taken over meanwhile. The result is
  stored once, in ``prelabel_predictions`` (see :mod:`.schema`), with a durable commit (on
  PostgreSQL one statement for the task row and the result).

Every periodic query (claim, heartbeat, lease expiry, settling, depth) reads a partial index
(:mod:`.schema`), so its cost follows the active work — a batch, the leases, the active jobs —
and not the million finished tasks a big project accumulates. Enqueueing is chunked
``INSERT ... ON CONFLICT DO NOTHING`` (no bind-parameter limit, idempotent per task).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    case,
    delete,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from database_tools.store import run_single_statement, single_statement_engine

from .. import metrics
from ..sql_claims import unflushed_commit, update_picked
from .schema import (
    ACTIVE_JOB_STATES,
    ACTIVE_KEY_PREDICATE,
    LEASED_PREDICATE,
    PRELABEL,
    PROBLEM_PREDICATE,
    PUSH_PENDING_PREDICATE,
    QUEUED_PREDICATE,
    CachedPrediction,
    Job,
    JobTask,
    predicate,
    upgrade_job_tables,
)

logger = logging.getLogger(__name__)

#: Tasks per enqueue transaction (workers see a huge job's first tasks while the rest is added).
ENQUEUE_CHUNK = 10_000
#: Tasks added to a PostgreSQL queue after which it refreshes the table's planner statistics.
#: Until autovacuum analyzes them (up to a minute or more), new rows are unknown to the planner,
#: which then planned a claim as a sort of the job's queued rows: 540-713 ms per claim at
#: 100,000 new tasks, against 0.15 ms through the queued-task index (docs/scale.md).
ANALYZE_MIN_ROWS = 10_000
#: Keys per ``IN (...)`` lookup: far below every driver's bind-parameter limit.
LOOKUP_CHUNK = 500
#: Rows per delete statement of ``purge`` (short transactions, no long table locks).
PURGE_CHUNK = 10_000


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
    kind: str = PRELABEL  # the job's kind: "refresh" results are pushed only when changed


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
    unchanged: int = 0  # refresh results equal to what Label Studio shows: not pushed again

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def settled(self) -> bool:
        """Nothing left to compute or push."""
        return self.queued == 0 and self.running == 0 and self.push_pending == 0


def _now() -> float:
    return time.time()


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def dialect_insert(dialect: str, table):
    """``INSERT`` of the dialect (both have ON CONFLICT clauses)."""
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise JobError(f"the job queue needs SQLite or PostgreSQL, not {dialect}")


#: Column values of a freshly queued task (besides job, task id, position, payload and key).
_NEW_TASK = dict(status="queued", attempts=0, next_at=0.0, error="", model_version="",
                 push_attempts=0, push_next_at=0.0, push_error="")
_TASK_COLUMNS = ("ls_task_id", "position", "task_json", "cache_key")
#: Columns of a stored result (``prelabel_predictions``), the key first.
_RESULT_COLUMNS = ("cache_key", "ls_task_id", "model_version", "result_json", "created_at")
_PG_STAGE_TASKS = ("CREATE TEMP TABLE tag_new_tasks (ls_task_id BIGINT, position INTEGER, "
                   "task_json TEXT, cache_key TEXT) ON COMMIT DROP")
_PG_INSERT_TASKS = (
    "INSERT INTO prelabel_tasks (job_id, " + ", ".join(_TASK_COLUMNS) + ", "
    + ", ".join(_NEW_TASK) + ") SELECT %(job_id)s, " + ", ".join(_TASK_COLUMNS) + ", "
    + ", ".join(f"%({name})s" for name in _NEW_TASK)
    + " FROM tag_new_tasks ON CONFLICT (job_id, ls_task_id) DO NOTHING")


class PurgeReport(NamedTuple):
    """What ``purge`` deleted."""

    jobs: int
    tasks: int
    predictions: int


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
        self._configs: dict[int, tuple[str, str]] = {}  # job id -> (label config, kind): fixed
        self._running: set[int] = set()  # jobs this process saw marked running
        self._depth: tuple[float, int] | None = None  # (recount after, last value)
        self._depth_lock = threading.Lock()
        # PostgreSQL: claims, heartbeats and records are single statements, each its own
        # (autocommit) transaction, on connections handed out without a pre-ping: one round
        # trip each (database_tools.store.single_statement_engine). SQLite keeps the store's
        # BEGIN IMMEDIATE.
        self.statement_engine = single_statement_engine(engine) \
            if self.dialect == "postgresql" else None
        self._claim_statement = self._build_claim_statement()
        self._build_record_statements()
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
                  keys: Sequence[str] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> int:
        """Add tasks not yet in the job (idempotent per Label Studio task id); returns how many.

        Chunks of :data:`ENQUEUE_CHUNK` tasks, one transaction each, inserted with
        ``ON CONFLICT (job_id, ls_task_id) DO NOTHING`` — on PostgreSQL ``COPY`` into a
        staging table and one ``INSERT ... SELECT`` per chunk (no bind parameter per task, so
        no parameter limit), on SQLite an ``executemany``. ``on_progress(n)`` follows each
        chunk.
        """
        if keys is not None and len(keys) != len(tasks):
            raise JobError("keys and tasks differ in length")
        with self.engine.connect() as conn:
            start = int(conn.scalar(select(func.coalesce(func.max(JobTask.position), -1))
                                    .where(JobTask.job_id == job_id))) + 1
        added, seen, unanalyzed = 0, set(), 0
        for offset in range(0, len(tasks), ENQUEUE_CHUNK):
            ids, positions, payloads, chunk_keys = [], [], [], []
            for i in range(offset, min(offset + ENQUEUE_CHUNK, len(tasks))):
                payload = task_payload(tasks[i])
                if payload["id"] in seen:
                    continue
                seen.add(payload["id"])
                ids.append(payload["id"])
                positions.append(start + i)
                payloads.append(json.dumps(payload))
                chunk_keys.append(keys[i] if keys is not None else "")
            if ids:
                with self.engine.begin() as conn:
                    inserted = self._insert_tasks(conn, job_id, ids, positions, payloads,
                                                  chunk_keys)
                    if inserted:
                        conn.execute(update(Job).where(Job.id == job_id, Job.status == "done")
                                     .values(status="queued", updated_at=_now()))
                        self._running.discard(job_id)
                added += inserted
                unanalyzed += inserted
                self._adjust_depth(inserted)
                # Once the first large chunk is in (workers claim while the rest is added),
                # and again at the end: the planner walks the queued-task index from the start.
                if unanalyzed >= ANALYZE_MIN_ROWS and added == unanalyzed:
                    self._analyze_tasks()
                    unanalyzed = 0
            if on_progress is not None:
                on_progress(min(ENQUEUE_CHUNK, len(tasks) - offset))
        if unanalyzed >= ANALYZE_MIN_ROWS:
            self._analyze_tasks()
        return added

    def _analyze_tasks(self) -> None:
        """Refresh PostgreSQL's statistics of the task table (see :data:`ANALYZE_MIN_ROWS`);
        SQLite plans the claim from the partial index without statistics."""
        if self.dialect == "postgresql":
            with self.engine.begin() as conn:
                conn.exec_driver_sql(f"ANALYZE {JobTask.__tablename__}")

    def _insert_tasks(self, conn: Connection, job_id: int, ids: list[int],
                      positions: list[int], payloads: list[str], keys: list[str]) -> int:
        if self.dialect == "postgresql":
            # COPY into a transaction-scoped staging table, then one INSERT ... SELECT: COPY
            # rows are formatted by psycopg's C code, far faster than any parameterised insert.
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(_PG_STAGE_TASKS)
                with cursor.copy("COPY tag_new_tasks (" + ", ".join(_TASK_COLUMNS)
                                 + ") FROM STDIN") as copy:
                    for row in zip(ids, positions, payloads, keys):
                        copy.write_row(row)
                cursor.execute(_PG_INSERT_TASKS, dict(job_id=job_id, **_NEW_TASK))
                return int(cursor.rowcount)
            finally:
                cursor.close()
        rows = [dict(job_id=job_id, ls_task_id=i, position=p, task_json=t, cache_key=k,
                     **_NEW_TASK) for i, p, t, k in zip(ids, positions, payloads, keys)]
        stmt = dialect_insert(self.dialect, JobTask.__table__).on_conflict_do_nothing(
            index_elements=["job_id", "ls_task_id"])
        return int(conn.execute(stmt, rows).rowcount)

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
                predicate(LEASED_PREDICATE), JobTask.status == "running",
                JobTask.lease_expires_at < now,
                JobTask.attempts >= self.policy.max_attempts,
            ).values(status="failed", lease_owner=None, finished_at=now,
                     error="worker lost its lease on every attempt (crash or kill?)")).rowcount
            back = conn.execute(update(JobTask).where(
                predicate(LEASED_PREDICATE), JobTask.status == "running",
                JobTask.lease_expires_at < now,
            ).values(status="queued", lease_owner=None, next_at=now)).rowcount
        if failed or back:
            logger.warning("expired leases: %d task(s) re-queued, %d failed", back, failed)
            metrics.JOB_TASKS.labels(outcome="failed").inc(failed)
        return int(back + failed)

    def _claimable(self, now: float):
        """Due queued tasks of active jobs, oldest job first, in task order.

        Walks ``ix_prelabel_tasks_queued`` (job_id, position) in order and stops after the
        batch: O(batch), however many tasks wait.

        ``next_at + 0``: the same test, but on an expression without column statistics, so
        that PostgreSQL estimates it alike with and without the actual ``now``. Otherwise
        the plan made for the actual value (every task due) always looks cheaper than the
        plan it could keep for any value (a third due), and a prepared claim was planned
        anew on every run: 0.43 ms of planning against 0.27 ms of execution at 1,000,000
        queued (``pg_stat_statements`` with ``track_planning``; docs/scale.md).
        """
        active_jobs = select(Job.id).where(Job.status.in_(ACTIVE_JOB_STATES))
        return (select(JobTask.id)
                .where(predicate(QUEUED_PREDICATE), JobTask.next_at + 0 <= now,
                       JobTask.job_id.in_(active_jobs))
                .order_by(JobTask.job_id, JobTask.position))

    def update_picked(self, pick, still_due):
        """``UPDATE prelabel_tasks`` of the rows ``pick`` selects (:mod:`..sql_claims`)."""
        return update_picked(JobTask.__table__, pick, self.dialect, still_due)

    def _build_claim_statement(self):
        """The claim as one ``UPDATE ... RETURNING``, built once with bound parameters.

        Building the expression (select, CTE, update) costs about as much client CPU as the
        database spends on the claim; reusing one statement object also lets SQLAlchemy reuse
        its compiled form without recomputing the cache key each time. The limit is written
        into the SQL (one prepared statement per batch size): a plan kept for any limit
        assumes a tenth of the table and is never preferred (see :meth:`_claimable`).
        """
        now = bindparam("claim_now")
        limit = bindparam("claim_limit", type_=Integer, literal_execute=True)
        return (self.update_picked(
            self._claimable(now).limit(limit),
            predicate(QUEUED_PREDICATE))
            .values(status="running", lease_owner=bindparam("claim_worker"),
                    lease_expires_at=bindparam("claim_expires"), attempts=JobTask.attempts + 1)
            .returning(JobTask.id, JobTask.job_id, JobTask.ls_task_id, JobTask.task_json,
                       JobTask.attempts, JobTask.position, *unflushed_commit(self.dialect)))

    def _run_single(self, statement, params: dict[str, Any]) -> list:
        """The rows of one write statement that is its own transaction: PostgreSQL in
        autocommit mode on the single-statement engine (one round trip; run once more on a
        new connection when the first turned out dead), SQLite in the store's ``BEGIN
        IMMEDIATE``. Only for statements whose second run is harmless (each caller says
        why)."""
        if self.statement_engine is not None:
            return run_single_statement(self.statement_engine, statement, params)
        with self.engine.begin() as conn:
            return conn.execute(statement, params).all()

    def claim(self, worker_id: str, limit: int) -> list[ClaimedTask]:
        """Lease up to ``limit`` due tasks for ``worker_id`` (oldest job first, in task order).

        One ``UPDATE ... RETURNING`` statement of the claimable rows (:meth:`update_picked`).
        On PostgreSQL it is sent in autocommit mode (a single round trip) and its commit does
        not wait for the WAL flush (:func:`..sql_claims.unflushed_commit`). Losing a claim in
        a database crash is harmless: the tasks are simply still queued, as if the claim had
        never run, and are claimed again; the worker holding the lost claim finds its lease
        gone when it records (:meth:`complete` and :meth:`fail` only change a row while
        ``lease_owner = worker_id AND status = 'running'``), so its result is dropped and the
        task is computed and recorded once by whoever claims it next. A recorded result
        cannot outlive its claim: the record commits durably, which flushes the WAL up to it,
        the claim included. Results (:meth:`complete`) keep durable commits.

        The first claim of a job by this process also reads the job's labeling config and
        marks the job running; should that fail, the just-claimed tasks are given back.
        """
        if limit <= 0:
            return []
        now = _now()
        # Run again after a lost connection: should the first run have committed, its tasks
        # are leased to this worker unseen and go back to the queue when the lease expires.
        rows = self._run_single(self._claim_statement, {
            "claim_now": now, "claim_limit": limit, "claim_worker": worker_id,
            "claim_expires": now + self.policy.lease_seconds})
        if not rows:
            return []
        job_ids = {r.job_id for r in rows}
        unknown = job_ids - self._configs.keys()
        starting = job_ids - self._running
        if unknown or starting:  # once per job and process: claims of a known job skip this
            try:
                self._start_jobs(unknown, starting, now)
            except Exception:
                self._give_back(worker_id, [r.id for r in rows])
                raise
        rows = sorted(rows, key=lambda r: (r.job_id, r.position))
        return [ClaimedTask(int(r.id), int(r.job_id), int(r.ls_task_id), json.loads(r.task_json),
                            int(r.attempts), *self._configs.get(r.job_id, ("", PRELABEL)))
                for r in rows]

    def _start_jobs(self, unknown: set[int], starting: set[int], now: float) -> None:
        """Remember the labeling config and kind of ``unknown`` jobs; mark ``starting`` jobs
        running."""
        with self.engine.begin() as conn:
            if unknown:
                self._configs.update((r.id, (r.label_config, r.kind)) for r in conn.execute(
                    select(Job.id, Job.label_config, Job.kind).where(Job.id.in_(unknown))))
            if starting:
                conn.execute(update(Job).where(Job.id.in_(starting), Job.status == "queued")
                             .values(status="running", updated_at=now))
        self._running |= starting

    def _give_back(self, worker_id: str, row_ids: list[int]) -> None:
        """Best effort: re-queue tasks just claimed but not handed to the worker (without
        counting the attempt). If the database refuses this too, the leases expire instead."""
        try:
            with self.engine.begin() as conn:
                conn.execute(update(JobTask).where(
                    JobTask.id.in_(row_ids), JobTask.lease_owner == worker_id,
                    JobTask.status == "running",
                ).values(status="queued", lease_owner=None, lease_expires_at=None,
                         attempts=JobTask.attempts - 1))
        except Exception as exc:  # noqa: BLE001 - the caller re-raises the original error
            logger.warning("could not give back %d claimed task(s) (%s); their leases expire "
                           "in %.0f s", len(row_ids), exc, self.policy.lease_seconds)

    def heartbeat(self, worker_id: str) -> int:
        """Renew every lease ``worker_id`` holds (compute and push); returns how many.

        ``lease_owner = :me`` reads the partial ``ix_prelabel_tasks_lease_owner``: O(own leases).
        One statement whose commit, like a claim's, does not wait for the WAL flush on
        PostgreSQL: a renewal lost in a database crash leaves the lease of the previous
        renewal, at least ``lease_seconds`` minus one heartbeat interval away, and the
        worker's next heartbeat renews it again; if it expired meanwhile, the task is
        re-queued and the late result dropped, as for any lost lease.
        """
        return len(self._run_single(update(JobTask).where(  # a renewal twice is one renewal
            JobTask.lease_owner == worker_id,
            or_(JobTask.status == "running", JobTask.push_status == "pushing"),
        ).values(lease_expires_at=_now() + self.policy.lease_seconds)
            .returning(JobTask.id, *unflushed_commit(self.dialect)), {}))

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
                 cache_key: str, *, unchanged: bool = False) -> bool:
        """Record a finished prediction (once: only while ``worker_id`` holds the lease).

        The item is stored once, in ``prelabel_predictions`` under ``cache_key`` (which the
        task row then points to). ``unchanged``: Label Studio already shows this very
        prediction (a refresh found nothing new): it is neither pushed nor stored
        (push state ``unchanged``). The commit is durable. On PostgreSQL the task row and the
        result are written by one statement (a data-modifying CTE) in autocommit mode: one
        round trip instead of five (BEGIN, three statements, COMMIT), which leaves more of the
        database's and the machine's time to the workers' claims; on SQLite by two statements
        in one transaction.
        """
        if not cache_key:
            raise JobError("a finished prediction needs its cache key")
        now = _now()
        params = {"rec_row": claim.row_id, "rec_worker": worker_id, "rec_key": cache_key,
                  "rec_version": str(item.get("model_version", "")), "rec_now": now,
                  "rec_unchanged": unchanged, "rec_task": claim.ls_task_id,
                  "rec_text": json.dumps(item, separators=(",", ":"))}
        if self.statement_engine is not None:
            # Run again after a lost connection: a first run that committed left the task
            # done, so the second finds no lease and reports the result dropped, wrongly
            # but harmlessly (it is stored).
            done = run_single_statement(self.statement_engine, self._record_statement, params)[0][0]
        else:
            with self.engine.begin() as conn:
                done = conn.execute(self._finish_task, params).rowcount
                if done and not unchanged:
                    conn.execute(self._store_one, params)
        if not done:
            logger.warning("task %s: lease lost before its result was recorded (another worker "
                           "owns it now): result dropped", claim.ls_task_id)
        else:
            self._adjust_depth(-1)
        return bool(done)

    def _build_record_statements(self) -> None:
        """The statements of :meth:`complete`, built once with bound parameters ``rec_*``.

        ``_finish_task`` marks the task done while ``rec_worker`` holds its lease; its push
        state follows the job (pushing, not cancelled). ``_record_statement`` (PostgreSQL)
        runs it as a CTE whose returned row feeds the result's upsert, and counts the finished
        rows (0: the lease was lost).
        """
        job = Job.__table__
        pushes = exists().where(job.c.id == JobTask.job_id, job.c.push != 0,
                                job.c.status != "cancelled")
        unchanged = bindparam("rec_unchanged", type_=Boolean)
        self._finish_task = update(JobTask).where(
            JobTask.id == bindparam("rec_row"), JobTask.lease_owner == bindparam("rec_worker"),
            JobTask.status == "running",
        ).values(status="done", cache_key=bindparam("rec_key"),
                 model_version=bindparam("rec_version"), finished_at=bindparam("rec_now"),
                 finished_by=bindparam("rec_worker"), lease_owner=None, lease_expires_at=None,
                 error="", push_status=case((unchanged, "unchanged"), (pushes, "pending"),
                                            else_="skipped"))
        self._record_statement = None
        if self.dialect != "postgresql":  # SQLite: the two statements in one transaction
            self._store_one = self._store_result_into(dialect_insert(
                self.dialect, CachedPrediction.__table__).values(
                cache_key=bindparam("rec_key"), ls_task_id=bindparam("rec_task"),
                model_version=bindparam("rec_version"), result_json=bindparam("rec_text"),
                created_at=bindparam("rec_now")))
            return
        done = self._finish_task.returning(JobTask.id).cte("done")
        result = select(bindparam("rec_key", type_=String), bindparam("rec_task", type_=BigInteger),
                        bindparam("rec_version", type_=Text), bindparam("rec_text", type_=Text),
                        bindparam("rec_now", type_=Float)).select_from(done).where(~unchanged)
        stored = self._store_result_into(postgresql.insert(CachedPrediction.__table__)
                                         .from_select(_RESULT_COLUMNS, result))
        self._record_statement = select(func.count()).select_from(done) \
            .add_cte(stored.cte("stored"))

    @staticmethod
    def _store_result_into(insert):
        """``insert`` of a result, replacing a stored one under the same cache key."""
        return insert.on_conflict_do_update(index_elements=["cache_key"], set_={
            name: insert.excluded[name] for name in _RESULT_COLUMNS[1:]})

    def fail(self, claim: ClaimedTask, worker_id: str, error: str, *, retry: bool = True) -> str:
        """Record a failed attempt: re-queued with back-off, or failed at the limit / if final."""
        now = _now()
        final = not retry or claim.attempts >= self.policy.max_attempts
        status = "failed" if final else "queued"
        with self.engine.begin() as conn:
            changed = conn.execute(update(JobTask).where(
                JobTask.id == claim.row_id, JobTask.lease_owner == worker_id,
                JobTask.status == "running",
            ).values(status=status, error=error[:2000], lease_owner=None, lease_expires_at=None,
                     next_at=now + self.policy.backoff(claim.attempts),
                     finished_at=now if final else None)).rowcount
        if changed and final:
            self._adjust_depth(-1)
        return status

    def cached(self, keys: Iterable[str]) -> dict[str, dict]:
        """Stored predictions by cache key (the keys embed the model_version)."""
        wanted = [k for k in set(keys) if k]
        if not wanted:
            return {}
        out: dict[str, dict] = {}
        with self.engine.connect() as conn:
            for part in chunks(wanted, LOOKUP_CHUNK):
                for key, text in conn.execute(select(CachedPrediction.cache_key,
                                                     CachedPrediction.result_json)
                                              .where(CachedPrediction.cache_key.in_(part))):
                    out[key] = json.loads(text)
        return out

    def pending_keys(self, keys: Iterable[str]) -> set[str]:
        """Which of ``keys`` are already queued or running in an active job (do not re-queue)."""
        wanted = [k for k in set(keys) if k]
        found: set[str] = set()
        with self.engine.connect() as conn:
            for part in chunks(wanted, LOOKUP_CHUNK):
                found.update(conn.scalars(
                    select(JobTask.cache_key).join(Job, Job.id == JobTask.job_id)
                    .where(predicate(ACTIVE_KEY_PREDICATE), JobTask.cache_key.in_(part),
                           JobTask.status.in_(("queued", "running")),
                           Job.status.in_(ACTIVE_JOB_STATES))).all())
        return found

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
            push_failed=by_push.get("failed", 0), unchanged=by_push.get("unchanged", 0))

    def failures(self, job_id: int, limit: int = 20) -> list[tuple[int, str]]:
        """(Label Studio task id, reason) of failed tasks and pushes."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(JobTask.ls_task_id, JobTask.error, JobTask.push_error)
                                .where(JobTask.job_id == job_id, predicate(PROBLEM_PREDICATE))
                                .order_by(JobTask.position).limit(limit)).all()
        return [(int(r[0]), r[1] or r[2]) for r in rows]

    def depth(self) -> int:
        """Tasks waiting or running in active jobs (the ``tag_queue_depth`` gauge).

        A count over the queued and leased partial indexes is O(waiting tasks), so a process
        recounts only after 50 times the last count's duration (at least a second): with a
        million tasks waiting the gauge is a few seconds old instead of costing a database
        core; with a small queue it is current. Between counts the last value is returned.
        """
        now = time.monotonic()
        if self._depth is not None and now < self._depth[0]:
            return self._depth[1]
        active = select(Job.id).where(Job.status.in_(ACTIVE_JOB_STATES))
        with self.engine.connect() as conn:
            queued = conn.scalar(select(func.count()).select_from(JobTask).where(
                predicate(QUEUED_PREDICATE), JobTask.job_id.in_(active)))
            # Running tasks are leased: counted from the lease index (a cancelled job's last
            # running tasks are included until they finish).
            running = conn.scalar(select(func.count()).select_from(JobTask).where(
                predicate(LEASED_PREDICATE), JobTask.status == "running"))
        n = int(queued or 0) + int(running or 0)
        cost = time.monotonic() - now
        with self._depth_lock:
            self._depth = (now + cost + max(1.0, 50 * cost), n)
        metrics.QUEUE_DEPTH.labels(queue="prelabel").set(n)
        return n

    def _adjust_depth(self, delta: int) -> None:
        """Apply this process's own change to the last count at once (between recounts the
        gauge then stays right for the work this process does)."""
        if not delta:
            return
        with self._depth_lock:
            if self._depth is None:
                return
            value = max(0, self._depth[1] + delta)
            self._depth = (self._depth[0], value)
        metrics.QUEUE_DEPTH.labels(queue="prelabel").set(value)

    def finish_settled_jobs(self) -> list[int]:
        """Mark active jobs with nothing left to compute or push as done.

        Two ``EXISTS`` probes per active job on the partial indexes (queued tasks, pending
        pushes) and one read of the lease index: O(active jobs + leases), not O(tasks).
        """
        task = JobTask.__table__
        busy = or_(
            exists().where(task.c.job_id == Job.id, predicate(QUEUED_PREDICATE)),
            exists().where(task.c.job_id == Job.id, predicate(PUSH_PENDING_PREDICATE)),
        )
        with self.engine.begin() as conn:
            # Leased rows (running or pushing) are few: read them whole from their index rather
            # than probing per job (SQLite would probe through the job's full unique index).
            leased = set(conn.scalars(select(JobTask.job_id).where(
                predicate(LEASED_PREDICATE))).all())
            ids = [i for i in conn.scalars(select(Job.id).where(
                Job.status.in_(ACTIVE_JOB_STATES), ~busy)).all() if i not in leased]
            if ids:
                conn.execute(update(Job).where(Job.id.in_(ids),
                                               Job.status.in_(ACTIVE_JOB_STATES))
                             .values(status="done", updated_at=_now()))
        for job_id in ids:
            logger.info("job %s finished", job_id, extra={"job_id": job_id})
        return list(ids)

    # ------------------------------------------------------------------ purge
    def purge(self, older_than: float,
              on_progress: Callable[[int], None] | None = None) -> PurgeReport:
        """Delete finished jobs (done/cancelled) last changed more than ``older_than`` seconds
        ago with their task rows, and stored predictions older than that which no active task
        or pending push still needs. Deletes in chunks of :data:`PURGE_CHUNK` rows (short
        transactions); ``on_progress(n)`` follows each chunk.
        """
        if older_than < 0:
            raise JobError("older_than must be >= 0 seconds")
        cutoff = _now() - older_than
        jobs = tasks = 0
        with self.engine.connect() as conn:
            old_jobs = conn.scalars(select(Job.id).where(
                Job.status.in_(("done", "cancelled")), Job.updated_at < cutoff)
                .order_by(Job.id)).all()
        for job_id in old_jobs:
            tasks += self._delete_chunks(JobTask.id, select(JobTask.id).where(
                JobTask.job_id == job_id), on_progress)
            with self.engine.begin() as conn:
                jobs += conn.execute(delete(Job).where(
                    Job.id == job_id, Job.status.in_(("done", "cancelled")))).rowcount
        task = JobTask.__table__
        still_needed = exists().where(task.c.cache_key == CachedPrediction.cache_key,
                                      predicate(ACTIVE_KEY_PREDICATE))
        predictions = self._delete_chunks(
            CachedPrediction.cache_key, select(CachedPrediction.cache_key).where(
                CachedPrediction.created_at < cutoff, ~still_needed), on_progress)
        self._configs = {k: v for k, v in self._configs.items() if k not in set(old_jobs)}
        self._running -= set(old_jobs)
        logger.info("purged %d job(s), %d task row(s), %d stored prediction(s)", jobs, tasks,
                    predictions)
        return PurgeReport(jobs, tasks, predictions)

    def _delete_chunks(self, key, pick, on_progress: Callable[[int], None] | None) -> int:
        """Delete the rows whose ``key`` ``pick`` selects, :data:`PURGE_CHUNK` per transaction."""
        deleted = 0
        while True:
            with self.engine.begin() as conn:
                n = conn.execute(delete(key.class_).where(
                    key.in_(pick.limit(PURGE_CHUNK).scalar_subquery()))).rowcount
            deleted += n
            if on_progress is not None and n:
                on_progress(n)
            if n < PURGE_CHUNK:
                return deleted
