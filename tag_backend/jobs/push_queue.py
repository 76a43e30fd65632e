"""Leased claims of finished predictions waiting to be pushed to Label Studio.

Pushes are leased like computations (``push_status = 'pushing'`` + lease owner/expiry) so two
replicas never push the same prediction, and a killed pusher's claims come back after the lease.
Label Studio being unreachable never loses a result: the row stays ``pending`` with back-off.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

from sqlalchemy import or_, select, update

from .push import AUTH, FAILED, GONE, PUSHED, RETRY
from .queue import JobQueue
from .schema import Job, JobTask

#: Longest wait between two pushes of one prediction while Label Studio is unreachable.
PUSH_BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class PushClaim:
    row_id: int
    ls_task_id: int
    item: dict
    attempts: int


def claim_pushes(queue: JobQueue, worker_id: str, limit: int) -> list[PushClaim]:
    """Lease up to ``limit`` due pushes (expired push leases are taken over)."""
    now = time.time()
    due = or_(
        (JobTask.push_status == "pending") & (JobTask.push_next_at <= now),
        (JobTask.push_status == "pushing") & (JobTask.lease_expires_at < now),
    )
    pushable_jobs = select(Job.id).where(Job.status.in_(("queued", "running", "done")),
                                         Job.push == 1)
    pick = (select(JobTask.id).where(due, JobTask.status == "done",
                                     JobTask.job_id.in_(pushable_jobs))
            .order_by(JobTask.finished_at).limit(limit))
    values = dict(push_status="pushing", lease_owner=worker_id,
                  lease_expires_at=now + queue.policy.lease_seconds,
                  push_attempts=JobTask.push_attempts + 1)
    with queue.engine.begin() as conn:
        if queue.dialect == "postgresql":
            ids = conn.scalars(pick.with_for_update(skip_locked=True)).all()
            if ids:
                conn.execute(update(JobTask).where(JobTask.id.in_(ids)).values(**values))
        else:
            ids = conn.scalars(update(JobTask).where(due, JobTask.id.in_(pick.scalar_subquery()))
                               .values(**values).returning(JobTask.id)).all()
        if not ids:
            return []
        rows = conn.execute(select(JobTask.id, JobTask.ls_task_id, JobTask.result_json,
                                   JobTask.push_attempts).where(JobTask.id.in_(ids))).all()
    return [PushClaim(int(r[0]), int(r[1]), json.loads(r[2]), int(r[3])) for r in rows]


def mark_push(queue: JobQueue, claim: PushClaim, worker_id: str, outcome: str,
              detail: str = "") -> None:
    """Record a push outcome (only while ``worker_id`` holds the push lease)."""
    now = time.time()
    values: dict = dict(lease_owner=None, lease_expires_at=None, push_error=detail[:2000])
    if outcome == PUSHED:
        values["push_status"] = "pushed"
    elif outcome == GONE:
        values["push_status"] = "gone"
    elif outcome == FAILED:
        values["push_status"] = "failed"
    elif outcome in (RETRY, AUTH):
        values["push_status"] = "pending"
        values["push_next_at"] = now + min(queue.policy.backoff(claim.attempts), PUSH_BACKOFF_MAX)
    else:
        raise ValueError(f"unknown push outcome {outcome!r}")
    with queue.engine.begin() as conn:
        conn.execute(update(JobTask).where(
            JobTask.id == claim.row_id, JobTask.lease_owner == worker_id,
            JobTask.push_status == "pushing").values(**values))
