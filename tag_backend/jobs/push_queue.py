"""Leased claims of finished predictions waiting to be pushed to Label Studio.

Pushes are leased like computations (``push_status = 'pushing'`` + lease owner/expiry) so two
replicas never push the same prediction, and a killed pusher's claims come back after the lease.
Label Studio being unreachable never loses a result: the row stays ``pending`` with back-off.
A confirmed push drops the stored result (Label Studio holds it now) unless another task still
waits to push the same prediction.

First attempts of one project go out in batches (:meth:`LabelStudioPusher.push_batch`);
retries are pushed one by one after checking the task does not already show the prediction
(a batch whose answer was lost may have been created).
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import delete, exists, select, update

from .push import AUTH, FAILED, GONE, PUSH_BATCH, PUSHED, RETRY, LabelStudioPusher, PushResult
from .queue import JobQueue
from .schema import (
    ACTIVE_KEY_PREDICATE,
    LEASED_PREDICATE,
    PUSH_PENDING_PREDICATE,
    CachedPrediction,
    Job,
    JobTask,
    predicate,
)

logger = logging.getLogger(__name__)

#: Longest wait between two pushes of one prediction while Label Studio is unreachable.
PUSH_BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class PushClaim:
    row_id: int
    ls_task_id: int
    item: dict | None  # None: the stored result is gone (purged)
    attempts: int
    project_id: int | None = None
    cache_key: str = ""


def claim_pushes(queue: JobQueue, worker_id: str, limit: int) -> list[PushClaim]:
    """Lease up to ``limit`` due pushes (expired push leases are taken over).

    Two index walks, each O(limit): pending pushes of pushable jobs in due order
    (``ix_prelabel_tasks_push_pending``) and expired push leases (``..._lease_expiry``).
    """
    now = time.time()
    pushable_jobs = select(Job.id).where(Job.status.in_(("queued", "running", "done")),
                                         Job.push == 1)
    pending = (select(JobTask.id).where(predicate(PUSH_PENDING_PREDICATE),
                                        JobTask.push_next_at <= now,
                                        JobTask.job_id.in_(pushable_jobs))
               .order_by(JobTask.job_id, JobTask.push_next_at).limit(limit))
    expired = (select(JobTask.id).where(predicate(LEASED_PREDICATE),
                                        JobTask.push_status == "pushing",
                                        JobTask.lease_expires_at < now)
               .order_by(JobTask.lease_expires_at).limit(limit))
    values = dict(push_status="pushing", lease_owner=worker_id,
                  lease_expires_at=now + queue.policy.lease_seconds,
                  push_attempts=JobTask.push_attempts + 1)
    due = ((JobTask.push_status == "pending") & (JobTask.push_next_at <= now)) | (
        (JobTask.push_status == "pushing") & (JobTask.lease_expires_at < now))
    with queue.engine.begin() as conn:
        ids: list[int] = []
        for pick in (expired, pending):
            room = limit - len(ids)
            if room <= 0:
                break
            ids += conn.scalars(queue.update_picked(pick.limit(room), due)
                                .values(**values).returning(JobTask.id)).all()
        if not ids:
            return []
        rows = conn.execute(
            select(JobTask.id, JobTask.ls_task_id, JobTask.push_attempts, JobTask.cache_key,
                   Job.project_id, CachedPrediction.result_json)
            .join(Job, Job.id == JobTask.job_id)
            .outerjoin(CachedPrediction, CachedPrediction.cache_key == JobTask.cache_key)
            .where(JobTask.id.in_(ids)).order_by(JobTask.id)).all()
    return [PushClaim(int(r.id), int(r.ls_task_id),
                      json.loads(r.result_json) if r.result_json is not None else None,
                      int(r.push_attempts),
                      int(r.project_id) if r.project_id is not None else None, r.cache_key)
            for r in rows]


def mark_push(queue: JobQueue, claim: PushClaim, worker_id: str, outcome: str,
              detail: str = "") -> None:
    """Record one push outcome (see :func:`mark_pushes`)."""
    mark_pushes(queue, [(claim, PushResult(outcome, detail))], worker_id)


def mark_pushes(queue: JobQueue, outcomes: list[tuple[PushClaim, PushResult]],
                worker_id: str) -> None:
    """Record push outcomes in one transaction (each only while ``worker_id`` holds its lease).

    A confirmed push drops the stored result in the same transaction, unless another task
    (another job on the same task) still needs it.
    """
    now = time.time()
    task = JobTask.__table__
    with queue.engine.begin() as conn:
        for claim, result in outcomes:
            values: dict = dict(lease_owner=None, lease_expires_at=None,
                                push_error=result.detail[:2000])
            if result.outcome == PUSHED:
                values["push_status"] = "pushed"
            elif result.outcome == GONE:
                values["push_status"] = "gone"
            elif result.outcome == FAILED:
                values["push_status"] = "failed"
            elif result.outcome in (RETRY, AUTH):
                values["push_status"] = "pending"
                values["push_next_at"] = now + min(queue.policy.backoff(claim.attempts),
                                                   PUSH_BACKOFF_MAX)
            else:
                raise ValueError(f"unknown push outcome {result.outcome!r}")
            marked = conn.execute(update(JobTask).where(
                JobTask.id == claim.row_id, JobTask.lease_owner == worker_id,
                JobTask.push_status == "pushing").values(**values)).rowcount
            if marked and result.outcome == PUSHED and claim.cache_key:
                still_needed = exists().where(task.c.cache_key == claim.cache_key,
                                              predicate(ACTIVE_KEY_PREDICATE))
                conn.execute(delete(CachedPrediction).where(
                    CachedPrediction.cache_key == claim.cache_key, ~still_needed))


def push_claims(queue: JobQueue, pusher: LabelStudioPusher, worker_id: str,
                claims: list[PushClaim]) -> list[tuple[PushClaim, PushResult]]:
    """Push ``claims`` and record every outcome; returns them.

    First attempts with a known project: one ``import_predictions`` request per
    :data:`PUSH_BATCH`; a refused batch (HTTP 400: a task deleted meanwhile, a result Label
    Studio rejects) falls back to one request per task so only the bad task fails. Retries and
    tasks without a project are pushed one by one, checking first whether the task's newest
    prediction of the same ``model_version`` already shows the item (no duplicates after a lost
    answer).
    """
    done: list[tuple[PushClaim, PushResult]] = []
    single: list[PushClaim] = []
    by_project: dict[int, list[PushClaim]] = defaultdict(list)
    for claim in claims:
        if claim.item is None:
            done.append((claim, PushResult(FAILED, "the stored result was purged before its "
                                                   "push")))
        elif claim.attempts > 1 or claim.project_id is None:
            single.append(claim)
        else:
            by_project[claim.project_id].append(claim)
    for project_id, group in by_project.items():
        for start in range(0, len(group), PUSH_BATCH):
            batch = group[start:start + PUSH_BATCH]
            result = pusher.push_batch(project_id, [(c.ls_task_id, c.item) for c in batch])
            if result.outcome == FAILED:
                single += batch
            else:
                done += [(c, result) for c in batch]
    for claim in single:
        done.append((claim, pusher.push(claim.ls_task_id, claim.item,
                                        check_existing=claim.attempts > 1)))
    mark_pushes(queue, done, worker_id)
    return done
