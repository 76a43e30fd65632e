"""/ready: not ready while models load or the database is down; ready once both are fine;
a database change by another process is picked up by the probe."""
from __future__ import annotations

import time

from store_helpers import add_entries

from tag_backend.app import app_backend, create_app


def _wait_ready(client, seconds=600):
    deadline = time.time() + seconds
    while time.time() < deadline:
        reply = client.get("/ready")
        if reply.status_code == 200:
            return reply
        time.sleep(0.5)
    return reply


def test_ready_after_models_load_and_follows_database_changes(tiny_settings):
    app = create_app(tiny_settings, start_worker=False)
    services, client = app_backend(app).services, app.test_client()
    first = client.get("/ready")
    assert client.get("/health").status_code == 200  # liveness never waits for models
    assert first.status_code == 503 and first.json["checks"]["models"] == "loading"
    reply = _wait_ready(client)
    assert reply.status_code == 200, reply.json
    assert reply.json["status"] == "READY" and set(reply.json["checks"]) == {
        "models", "database", "index"}
    before = services.store.db_version()
    add_entries(services.store, "concept", ["okapi"], source="another replica")
    assert services.store.db_version() > before
    after = _wait_ready(client)  # the probe refreshed the loaded knowledge from the database
    assert after.status_code == 200
    knowledge = services.loaded_knowledge()
    assert knowledge.db_version == services.store.db_version()
    # The new concept is served (from the delta index, next to the base).
    (hit, *_), = knowledge.index.search(services.text_encoder.encode(["okapi"]), 1)
    assert hit.text == "okapi"
    services.close()


def test_not_ready_when_the_database_is_unreachable(tiny_settings):
    settings = tiny_settings.replace(db_url="postgresql+psycopg://nobody@127.0.0.1:9/none")
    client = create_app(settings, start_worker=False).test_client()
    reply = client.get("/ready")
    assert reply.status_code == 503
    assert reply.json["checks"]["database"].startswith(("failed", "no answer"))
