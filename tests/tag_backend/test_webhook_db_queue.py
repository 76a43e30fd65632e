"""The database webhook queue (PostgreSQL and SQLite): per-annotation order across claimers,
leases taken over after a kill, retries keep their place, fallback spool while the DB is down."""
from __future__ import annotations

import time

from jobs_fixtures import jobs_db_url, jobs_store  # noqa: F401

from tag_backend.ls.webhook_db_queue import DbWebhookQueue, order_key
from tag_backend.ls.webhook_queue import WebhookSpool


def _event(annotation: int, n: int, action="ANNOTATION_UPDATED") -> dict:
    return {"action": action, "annotation": {"id": annotation, "n": n}, "project": {"id": 1}}


def _queue(store, tmp_path, name="a", **kw) -> DbWebhookQueue:
    return DbWebhookQueue(lambda: store.engine, WebhookSpool(tmp_path / f"spool-{name}"), **kw)


def test_order_is_kept_per_annotation_across_replicas(jobs_store, tmp_path):
    a, b = _queue(jobs_store, tmp_path, "a"), _queue(jobs_store, tmp_path, "b")
    a.put(_event(1, 1, "ANNOTATION_CREATED"))
    b.put(_event(2, 1, "ANNOTATION_CREATED"))
    a.put(_event(1, 2))
    assert a.put(_event(1, 2)) and a.depth() == 3  # an identical waiting delivery is stored once
    first = a.claim()
    second = b.claim()  # annotation 1's update must wait for its creation: annotation 2 instead
    assert (first.payload["annotation"], second.payload["annotation"]) == (
        {"id": 1, "n": 1}, {"id": 2, "n": 1})
    assert b.claim() is None
    a.retry(first, 0.3)  # a retry keeps its place: the update still waits behind it
    assert b.claim() is None
    time.sleep(0.35)
    again = b.claim()
    assert again.payload["annotation"] == {"id": 1, "n": 1} and again.attempts == 1
    b.done(again)
    b.done(second)
    last = a.claim()
    assert last.payload["annotation"] == {"id": 1, "n": 2}
    a.fail(last, "bad payload")
    assert a.depth() == 0 and [f["reason"] for f in a.failed()] == ["bad payload"]


def test_a_killed_replicas_lease_is_taken_over(jobs_store, tmp_path):
    dead = _queue(jobs_store, tmp_path, "dead", lease_seconds=0.2)
    alive = _queue(jobs_store, tmp_path, "alive")
    dead.put(_event(5, 1))
    assert dead.claim() is not None  # then the process dies without done()
    assert alive.claim() is None
    time.sleep(0.3)
    taken = alive.claim()
    assert taken is not None and taken.payload["annotation"]["id"] == 5
    dead.done(taken)  # the dead worker's late answer does not remove the new owner's claim
    assert alive.depth() == 0
    alive.done(taken)
    assert alive.depth() == 0 and alive.claim() is None


def test_database_down_falls_back_to_the_local_spool(jobs_store, tmp_path):
    state = {"down": True}

    def engine():
        if state["down"]:
            raise OSError("connection refused")
        return jobs_store.engine

    queue = DbWebhookQueue(engine, WebhookSpool(tmp_path / "spool"))
    queue.put(_event(7, 1, "ANNOTATION_CREATED"))
    queue.put(_event(7, 2))
    assert queue.fallback.depth() == 2 and queue.depth() == 2
    assert queue.claim() is None  # nothing can be applied while the database is down
    state["down"] = False
    first = queue.claim()  # spooled payloads move into the table first, in order
    assert queue.fallback.depth() == 0 and first.payload["annotation"] == {"id": 7, "n": 1}
    queue.done(first)
    assert queue.claim().payload["annotation"] == {"id": 7, "n": 2}


def test_order_keys():
    assert order_key(_event(3, 1)) == "annotation:3"
    assert order_key({"action": "START_TRAINING", "project": {"id": 4}}) == "project:4"
    assert order_key({"action": "ANNOTATIONS_CREATED", "annotation": [{"id": 1}],
                      "project": {"id": 9}}) == "project:9"
