"""Queue semantics on SQLite and PostgreSQL: claims, leases, retries, pushes, cancel, cache."""
from __future__ import annotations

import threading
import time

import pytest
from jobs_fixtures import jobs_db_url, jobs_store, make_queue, tasks  # noqa: F401

from tag_backend.jobs.push import GONE, PUSHED, RETRY
from tag_backend.jobs.push_queue import claim_pushes, mark_push
from tag_backend.jobs.queue import JobError

ITEM = {"result": [], "score": 0.5, "model_version": "v1"}


def _job(queue, n=6, **kw):
    return queue.create_job("prelabel", tasks(n), label_config="<View/>", model_version="v1",
                            project_id=kw.pop("project_id", 7), **kw)


def test_claims_are_disjoint_and_in_order(jobs_store):
    queue = make_queue(jobs_store)
    _job(queue, 5)
    a = queue.claim("a", 2)
    b = queue.claim("b", 10)
    assert [c.ls_task_id for c in a] == [1, 2]
    assert [c.ls_task_id for c in b] == [3, 4, 5]
    assert queue.claim("c", 10) == []
    assert all(c.attempts == 1 for c in a + b)


def test_concurrent_claimers_never_share_a_task(jobs_store):
    queue = make_queue(jobs_store)
    _job(queue, 60)
    got: dict[str, list[int]] = {}

    def claimer(name):
        mine = got.setdefault(name, [])
        while True:
            claims = queue.claim(name, 3)
            if not claims:
                return
            mine.extend(c.ls_task_id for c in claims)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    everything = [i for ids in got.values() for i in ids]
    assert sorted(everything) == list(range(1, 61))


def test_expired_lease_is_reclaimed_and_result_recorded_once(jobs_store):
    queue = make_queue(jobs_store, lease_seconds=0.3)
    job = _job(queue, 1)
    (first,) = queue.claim("dead", 1)
    time.sleep(0.4)
    assert queue.expire_leases() == 1
    (second,) = queue.claim("alive", 1)
    assert second.ls_task_id == first.ls_task_id and second.attempts == 2
    assert queue.complete(first, "dead", ITEM, "k1") is False  # the dead worker's late result
    assert queue.complete(second, "alive", ITEM, "k1") is True
    assert queue.complete(second, "alive", ITEM, "k1") is False  # never twice
    p = queue.progress(job)
    assert (p.done, p.queued, p.running) == (1, 0, 0)


def _lose_claim_in_a_crash(queue, claim) -> None:
    """The task row as a database crash that lost the (unflushed) claim leaves it: as before
    the claim ran."""
    from sqlalchemy import update

    from tag_backend.jobs.schema import JobTask

    with queue.engine.begin() as conn:
        conn.execute(update(JobTask).where(JobTask.id == claim.row_id).values(
            status="queued", lease_owner=None, lease_expires_at=None,
            attempts=claim.attempts - 1))


def test_a_claim_lost_in_a_database_crash_leaves_the_task_queued(jobs_store):
    """Claims commit without waiting for the WAL flush on PostgreSQL: losing one is harmless.
    The worker still computing the task finds its lease gone when it records; whoever claims
    the task next records it, once."""
    queue = make_queue(jobs_store)
    job = _job(queue, 1)
    (lost,) = queue.claim("a", 1)
    _lose_claim_in_a_crash(queue, lost)
    assert queue.progress(job).queued == 1
    (again,) = queue.claim("b", 1)
    assert (again.ls_task_id, again.attempts) == (lost.ls_task_id, 1)
    assert queue.complete(lost, "a", ITEM, "k-a") is False  # late result of the lost claim
    assert queue.fail(lost, "a", "HTTP 500") == "queued"  # nor can it fail the task
    assert queue.progress(job).running == 1
    assert queue.complete(again, "b", ITEM, "k-b") is True
    assert queue.cached(["k-a", "k-b"]).keys() == {"k-b"}
    p = queue.progress(job)
    assert (p.done, p.queued, p.running, p.push_pending) == (1, 0, 0, 1)


def test_a_worker_that_reclaims_after_losing_its_claim_records_once(jobs_store):
    """The same worker id may claim the task again after its claim was lost: of its two
    computations the first to finish is recorded, the other is dropped."""
    queue = make_queue(jobs_store)
    job = _job(queue, 1)
    (lost,) = queue.claim("a", 1)
    _lose_claim_in_a_crash(queue, lost)
    (again,) = queue.claim("a", 1)
    assert queue.complete(lost, "a", ITEM, "k1") is True
    assert queue.complete(again, "a", ITEM, "k1") is False
    p = queue.progress(job)
    assert (p.done, p.queued, p.running) == (1, 0, 0)


def test_claimed_tasks_are_given_back_when_the_job_cannot_be_started(jobs_store, monkeypatch):
    """The first claim of a job also reads its config and marks it running (a second
    transaction): if that fails the claimed tasks are re-queued at once, attempt not counted."""
    queue = make_queue(jobs_store)
    job = _job(queue, 3)

    def refuse(*_args):
        raise RuntimeError("database went away")

    monkeypatch.setattr(queue, "_start_jobs", refuse)
    with pytest.raises(RuntimeError):
        queue.claim("w", 2)
    p = queue.progress(job)
    assert (p.queued, p.running) == (3, 0)
    monkeypatch.undo()
    claims = queue.claim("w", 3)
    assert [(c.ls_task_id, c.attempts, c.label_config) for c in claims] == [
        (1, 1, "<View/>"), (2, 1, "<View/>"), (3, 1, "<View/>")]
    assert queue.get_job(job).status == "running"


def test_heartbeat_keeps_the_lease(jobs_store):
    queue = make_queue(jobs_store, lease_seconds=0.5)
    _job(queue, 1)
    (claim,) = queue.claim("w", 1)
    for _ in range(3):
        time.sleep(0.25)
        assert queue.heartbeat("w") == 1
    assert queue.expire_leases() == 0
    assert queue.complete(claim, "w", ITEM, "k") is True


def test_worker_that_keeps_dying_fails_the_task_at_the_limit(jobs_store):
    queue = make_queue(jobs_store, lease_seconds=0.1, max_attempts=2)
    job = _job(queue, 1)
    for _ in range(2):
        assert len(queue.claim("dying", 1)) == 1
        time.sleep(0.15)
        queue.expire_leases()
    p = queue.progress(job)
    assert (p.failed, p.queued) == (1, 0)
    assert "lease" in queue.failures(job)[0][1]


def test_failures_retry_with_backoff_up_to_the_limit(jobs_store):
    queue = make_queue(jobs_store, max_attempts=3, backoff_base=0.3)
    job = _job(queue, 2)
    c1, c2 = queue.claim("w", 2)
    assert queue.fail(c1, "w", "HTTP 500", retry=True) == "queued"
    assert queue.fail(c2, "w", "no image field", retry=False) == "failed"
    assert queue.claim("w", 5) == []  # backing off: not due yet
    time.sleep(0.35)
    (again,) = queue.claim("w", 5)
    assert again.attempts == 2
    assert queue.fail(again, "w", "HTTP 500") == "queued"
    assert queue.claim("w", 5) == []  # second back-off is twice as long
    time.sleep(0.65)
    (last,) = queue.claim("w", 5)
    assert queue.fail(last, "w", "HTTP 500") == "failed"
    p = queue.progress(job)
    assert (p.failed, p.queued, p.done) == (2, 0, 0)
    assert dict(queue.failures(job)) == {1: "HTTP 500", 2: "no image field"}


def test_release_gives_back_claims_without_counting_the_attempt(jobs_store):
    queue = make_queue(jobs_store)
    _job(queue, 3)
    queue.claim("w", 3)
    assert queue.release("w") == 3
    claims = queue.claim("v", 3)
    assert [c.attempts for c in claims] == [1, 1, 1]


def test_add_tasks_is_idempotent_and_jobs_finish(jobs_store):
    queue = make_queue(jobs_store)
    job = _job(queue, 3, push=False)
    assert queue.add_tasks(job, tasks(5)) == 2
    assert queue.find_active_job(7, "prelabel") == job
    assert queue.find_active_job(8, "prelabel") is None
    for claim in queue.claim("w", 10):
        queue.complete(claim, "w", ITEM, f"k{claim.ls_task_id}")
    assert queue.progress(job).push_pending == 0  # push=False: nothing to push
    assert queue.finish_settled_jobs() == [job]
    assert queue.get_job(job).status == "done"
    assert queue.find_active_job(7, "prelabel") is None
    assert queue.depth() == 0


def test_cancel_drops_queued_tasks(jobs_store):
    queue = make_queue(jobs_store)
    job = _job(queue, 4)
    (running,) = queue.claim("w", 1)
    assert queue.cancel(job) == 3
    assert queue.claim("w", 10) == []
    assert queue.get_job(job).status == "cancelled"
    assert queue.complete(running, "w", ITEM, "k")  # the batch in flight still finishes...
    p = queue.progress(job)
    assert (p.done, p.cancelled, p.push_pending) == (1, 3, 0)  # ...but is not pushed
    with pytest.raises(JobError):
        queue.cancel(999)


class _Clock:
    """The queue's wall clock, moved by the test: lease and back-off expiry are steps of the
    test, not races against a loaded machine."""

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_pushes_are_leased_and_outcomes_recorded(jobs_store, monkeypatch):
    from tag_backend.jobs import push_queue
    from tag_backend.jobs import queue as queue_module

    clock = _Clock()
    monkeypatch.setattr(queue_module, "_now", clock.time)
    monkeypatch.setattr(push_queue, "time", clock)  # push_queue reads only time.time()
    queue = make_queue(jobs_store, backoff_base=5, lease_seconds=30)
    job = _job(queue, 3)
    for claim in queue.claim("w", 3):
        assert queue.complete(claim, "w", {**ITEM, "model_version": "v1"}, f"k{claim.ls_task_id}")
    pushes = claim_pushes(queue, "p", 10)
    assert sorted(p.ls_task_id for p in pushes) == [1, 2, 3]
    assert claim_pushes(queue, "q", 10) == []  # leased by p
    by_task = {p.ls_task_id: p for p in pushes}
    mark_push(queue, by_task[1], "p", PUSHED)
    mark_push(queue, by_task[2], "p", GONE, "deleted")
    mark_push(queue, by_task[3], "p", RETRY, "connection refused")
    assert claim_pushes(queue, "q", 10) == []  # retry is backing off (5 s)
    clock.advance(6)
    (retry,) = claim_pushes(queue, "q", 10)
    assert retry.ls_task_id == 3 and retry.attempts == 2 and retry.item["model_version"] == "v1"
    clock.advance(31)  # q dies holding the push lease: another pusher takes it over
    (taken,) = claim_pushes(queue, "r", 10)
    mark_push(queue, retry, "q", PUSHED)  # q's late bookkeeping is ignored
    mark_push(queue, taken, "r", PUSHED)
    p = queue.progress(job)
    assert (p.pushed, p.push_gone, p.push_pending) == (2, 1, 0)


def test_cached_predictions_and_pending_keys(jobs_store):
    queue = make_queue(jobs_store)
    job = queue.create_job("predict", tasks(2), label_config="<View/>", model_version="v1",
                           keys=["ka", "kb"])
    assert queue.pending_keys(["ka", "kb", "kc"]) == {"ka", "kb"}
    claim = queue.claim("w", 1)[0]
    queue.complete(claim, "w", ITEM, "ka")
    assert queue.cached(["ka", "kb"]) == {"ka": ITEM}
    assert queue.pending_keys(["ka", "kb"]) == {"kb"}
    queue.cancel(job)
    assert queue.pending_keys(["kb"]) == set()
