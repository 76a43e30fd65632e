"""The durable webhook spool: persistence, de-duplication, retries, crash recovery."""

from __future__ import annotations

import os

from tag_backend.ls.webhook_queue import WebhookSpool, read_failed


def test_put_claim_done_and_dedupe(tmp_path):
    spool = WebhookSpool(tmp_path)
    payload = {"action": "ANNOTATION_CREATED", "annotation": {"id": 1}}
    spool.put(payload)
    spool.put(dict(payload))  # same delivery twice: one file
    assert spool.depth() == 1
    item = spool.claim()
    assert item.payload == payload and spool.claim() is None
    spool.done(item)
    assert spool.depth() == 0 and not list(spool.working.iterdir())


def test_retry_backoff_and_fail(tmp_path):
    spool = WebhookSpool(tmp_path)
    spool.put({"a": 1})
    item = spool.claim()
    spool.retry(item, delay=3600)
    assert spool.depth() == 1 and spool.claim() is None  # not due yet
    spool.put({"b": 2})
    item = spool.claim()
    assert item.payload == {"b": 2}
    spool.fail(item, "ValueError: bad")
    assert read_failed(spool)[0]["reason"] == "ValueError: bad"


def test_recover_after_crash(tmp_path):
    spool = WebhookSpool(tmp_path)
    spool.put({"c": 3})
    item = spool.claim()
    dead = item.path.with_name(item.path.name.replace(f".{os.getpid()}.", ".999999999."))
    item.path.rename(dead)  # as if claimed by a process that died
    fresh = WebhookSpool(tmp_path)
    assert fresh.recover() == 1
    assert fresh.claim().payload == {"c": 3}
