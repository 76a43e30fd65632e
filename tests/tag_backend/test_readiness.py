"""/ready: not ready while models load or the database is down; ready once both are fine;
a database change by another process is picked up by the probe."""
from __future__ import annotations

import threading
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


class _SlowModels:
    """The real models behind a gate: loading DINOv2 (the first model the engine loads) waits
    until the test opens it (a replica whose models take minutes to load)."""

    def __init__(self, real, gate: threading.Event) -> None:
        self.real, self.gate, self.entered = real, gate, threading.Event()

    @property
    def dino(self):
        self.entered.set()
        self.gate.wait()
        return self.real.dino

    def __getattr__(self, name):
        return getattr(self.real, name)


def _in_thread(fn, seconds: float = 120.0):
    """``fn()``'s result if it returns within ``seconds`` (a bound far above its real cost:
    the check is that it returns at all while the models load), else fail."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert out, f"{fn} still waiting after {seconds} s: it waits for the models to load"
    return out[0]


def test_probe_and_predict_wait_do_not_block_while_the_models_load(tiny_settings):
    """A cold replica answers /ready with 503 at once, and /predict's bounded wait stays
    bounded, while the loader holds the engine for the whole load."""
    from tag_backend.readiness import ReadinessProbe
    from tag_backend.services import Services

    services = Services(tiny_settings)
    gate = threading.Event()
    services.models = _SlowModels(services.models, gate)
    try:
        assert services.wait_until_loaded(0) is False  # starts the background load
        assert services.models.entered.wait(120)  # the loader is inside the load now
        readiness = _in_thread(ReadinessProbe(services).check)
        assert not readiness.ready and readiness.checks["models"] == "loading"
        assert _in_thread(lambda: services.wait_until_loaded(0.1)) is False
    finally:
        gate.set()
    assert services.wait_until_loaded(600)
    services.close()


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
