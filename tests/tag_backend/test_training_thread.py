"""START_TRAINING re-ingests on its own thread: corrections keep being learned meanwhile."""

from __future__ import annotations

import threading
import time

from database_tools.corrections import CorrectionReport

from tag_backend.ls.corrections import CorrectionWorker
from tag_backend.ls.webhook_queue import WebhookSpool

from ls_helpers import copy_services


def _wait(predicate, seconds=30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_start_training_does_not_block_corrections(tiny_services_session, tmp_path):
    services = copy_services(tiny_services_session, tmp_path)
    spool = WebhookSpool(tmp_path / "spool")
    release, started, runs = threading.Event(), threading.Event(), []

    def reingest(payload):  # a long project re-ingest, held until released
        runs.append(payload["project"]["id"])
        started.set()
        assert release.wait(60)
        return CorrectionReport()

    worker = CorrectionWorker(services, spool, reingest=reingest)
    training = {"action": "START_TRAINING", "project": {"id": 7}}
    spool.put(training)
    assert worker.run_once() is True and started.wait(30)
    # A second click for the same project while it runs is kept for later, not run twice at once.
    spool.put({"action": "START_TRAINING", "project": {"id": 7, "title": "again"}})
    assert worker.run_once() is True
    assert runs == [7] and spool.depth() == 1
    # Meanwhile an annotation is learned at once.
    spool.put({"action": "ANNOTATION_CREATED", "project": {"id": 7},
               "annotation": {"id": 901, "result": [], "updated_at": "2024-01-01T00:00:00Z"}})
    assert worker.run_once() is True
    assert worker.processed == 1 and runs == [7]
    release.set()
    # processed counts a payload after its spool file is gone: wait for the count itself.
    assert _wait(lambda: worker.processed == 2)
    assert not list(spool.working.glob("*.json")) and not list(spool.failed.glob("*.json"))
    worker.stop()
