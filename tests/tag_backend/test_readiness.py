"""/ready: not ready while models load or the database is down; ready once both are fine;
a database change by another process is picked up by the probe."""
from __future__ import annotations

import time

from tag_backend.app import create_app
from tag_backend.runtime import Runtime


def _wait_ready(client, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        reply = client.get("/ready")
        if reply.status_code == 200:
            return reply
        time.sleep(0.5)
    return reply


def test_ready_after_models_load_and_follows_database_changes(tiny_settings):
    runtime = Runtime(tiny_settings)
    client = create_app(tiny_settings, runtime, start_worker=False).test_client()
    first = client.get("/ready")
    assert client.get("/health").status_code == 200  # liveness never waits for models
    assert first.status_code == 503 and first.json["checks"]["models"] == "loading"
    reply = _wait_ready(client)
    assert reply.status_code == 200, reply.json
    assert reply.json["status"] == "READY" and set(reply.json["checks"]) == {
        "models", "database", "index"}
    before = runtime.store.db_version()
    runtime.store.add_entries("concept", ["okapi"], source="another replica")
    assert runtime.store.db_version() > before
    after = _wait_ready(client)  # the probe refreshed the loaded index from the database
    assert after.status_code == 200
    assert "okapi" in set(runtime.pipeline.index.entries.column("text").to_pylist())


def test_not_ready_when_the_database_is_unreachable(tiny_settings):
    settings = tiny_settings.replace(db_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    client = create_app(settings, Runtime(settings), start_worker=False).test_client()
    reply = client.get("/ready")
    assert reply.status_code == 503
    assert reply.json["checks"]["database"].startswith(("failed", "no answer"))
