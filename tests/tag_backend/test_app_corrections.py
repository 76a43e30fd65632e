"""The correction loop through the app: webhook -> spool -> worker -> store/index -> predict."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from tag_backend.app import app_backend, create_app

from ls_helpers import CONFIG, copy_services

N_WEBHOOKS = 1000


@pytest.fixture()
def loop(tiny_services_session, tmp_path):
    from scenes import flat_shapes

    img, _ = flat_shapes(120, seed=3)
    img.save(tmp_path / "a.png")
    near = np.asarray(img).astype(np.int16) + np.random.default_rng(0).integers(
        -2, 3, (120, 120, 3)
    )
    Image.fromarray(np.clip(near, 0, 255).astype(np.uint8)).save(tmp_path / "b.png")
    services = copy_services(
        tiny_services_session, tmp_path, allowed_local_roots=str(tmp_path),
        predict_budget_seconds=1e9,
    )
    app = create_app(services=services, start_worker=False)
    return app.test_client(), app_backend(app), tmp_path


def _predict(client, path):
    r = client.post(
        "/predict",
        json={"tasks": [{"id": 1, "data": {"image": str(path)}}], "label_config": CONFIG},
    )
    return r.json["results"][0]


def _renamed(prediction, new_name):
    """An annotation made from the prediction with the largest region renamed."""
    result = copy.deepcopy(prediction["result"])
    target = result[0]["id"]
    for item in result:
        if item["id"] == target and item["type"] == "textarea":
            old = item["value"]["text"][0]
            item["value"]["text"] = [new_name]
    return result, target, old


def test_rename_is_learned_live_and_released_explicitly(loop):
    client, backend, root = loop
    before = _predict(client, root / "a.png")
    version0, db0 = before["model_version"], backend.services.store.db_version()
    result, region_id, old = _renamed(before, "zorblax widget")
    assert old != "zorblax widget"
    payload = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 5},
        "task": {
            "id": 1,
            "data": {"image": str(root / "a.png")},
            "predictions": [{"id": 11, "result": before["result"]}],
        },
        "annotation": {
            "id": 21,
            "result": result,
            "updated_at": "2024-05-01T10:00:00Z",
            "parent_prediction": 11,
            "completed_by": 1,
        },
    }
    assert client.post("/webhook", json=payload).status_code == 201
    assert client.post("/webhook", json=payload).status_code == 201  # duplicate delivery
    assert backend.worker.run_once() is True
    assert backend.worker.run_once() is False  # the duplicate was merged in the spool
    assert backend.services.store.db_version() > db0
    names, _ = backend.services.store.load_exemplars(backend.services.models.clip.encoder_id)
    assert "zorblax widget" in names
    setup = client.post("/setup", json={"project": "5.1", "schema": CONFIG}).json
    assert setup["model_version"] == version0  # learnt live: no new version per correction
    after = _predict(client, root / "b.png")
    texts = [i["value"]["text"][0] for i in after["result"] if i["type"] == "textarea"]
    assert "zorblax widget" in texts
    assert after["model_version"] == version0
    from database_tools.releases import cut_release

    cut_release(backend.services.store, note="test")
    released = _predict(client, root / "b.png")  # /predict picks up the release
    assert released["model_version"] != version0 and released["model_version"].endswith("-r1")
    setup = client.post("/setup", json={"project": "5.1", "schema": CONFIG}).json
    assert setup["model_version"] == released["model_version"]
    assert client.get("/versions").json["versions"] == [released["model_version"], version0]
    # Deleting the annotation undoes the exemplar.
    client.post(
        "/webhook",
        json={"action": "ANNOTATIONS_DELETED", "project": {"id": 5}, "annotations": [{"id": 21}]},
    )
    assert backend.worker.run_once() is True
    names, _ = backend.services.store.load_exemplars(backend.services.models.clip.encoder_id)
    assert "zorblax widget" not in names


def test_empty_annotation_and_unknown_project_are_recorded_quietly(loop):
    client, backend, root = loop
    payload = {
        "action": "ANNOTATION_UPDATED",
        "project": {"id": 424242},
        "task": {"id": 9, "data": {"image": str(root / "a.png")}},
        "annotation": {"id": 77, "result": [], "updated_at": "2024-05-01T10:00:00Z"},
    }
    assert client.post("/webhook", json=payload).status_code == 201
    assert backend.worker.run_once() is True
    assert backend.spool.depth() == 0 and not list(backend.spool.failed.iterdir())


def test_database_unreachable_keeps_corrections_and_retries(tiny_services_session, tmp_path):
    settings = tiny_services_session.settings.replace(
        data_dir=str(tmp_path / "d"), db_url="postgresql+psycopg://u:p@127.0.0.1:9/none"
    )
    app = create_app(settings, start_worker=False)
    client, backend = app.test_client(), app_backend(app)
    assert client.get("/health").status_code == 200
    setup = client.post("/setup", json={"project": "1.1", "schema": CONFIG})
    assert setup.status_code == 200 and "db-unavailable" in setup.json["model_version"]
    payload = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 1},
        "task": {"id": 1, "data": {}},
        "annotation": {"id": 5, "result": [], "updated_at": "2024-01-01T00:00:00Z"},
    }
    assert client.post("/webhook", json=payload).status_code == 201
    # On PostgreSQL the queue lives in the database; while it is down the payload waits in
    # the local spool (acknowledged, not lost, not failed) and nothing is claimed.
    assert backend.worker.run_once() is False
    assert backend.spool.depth() == 1 and backend.spool.fallback.depth() == 1
    assert not list(backend.spool.fallback.failed.glob("*.json"))


def test_bulk_annotations_created_payload_shape(loop):
    """LS 1.23 sends ANNOTATIONS_CREATED with lists under ``annotation`` and ``task``."""
    client, backend, root = loop
    pred = _predict(client, root / "a.png")
    result, _, _ = _renamed(pred, "bulk gizmo")
    tasks = [{"id": 1, "data": {"image": str(root / "a.png")}}, {"id": 2, "data": {}}]
    anns = [
        {"id": 31, "task": 1, "result": result, "updated_at": "2024-05-01T10:00:00Z"},
        {"id": 32, "task": 2, "result": [], "updated_at": "2024-05-01T10:00:00Z"},
    ]
    payload = {
        "action": "ANNOTATIONS_CREATED",
        "project": {"id": 5},
        "annotation": anns,
        "task": tasks,
    }
    assert client.post("/webhook", json=payload).status_code == 201
    assert backend.worker.run_once() is True
    assert not list(backend.spool.failed.glob("*.json"))
    names, _ = backend.services.store.load_exemplars(backend.services.models.clip.encoder_id)
    assert "bulk gizmo" in names


@pytest.mark.slow  # 1,000 recorded annotations: ~1 min on a quiet 2-core machine
def test_a_thousand_corrections_keep_model_version_until_a_release(loop):
    """1,000 correction webhooks (200 of them new names): learnt live, no base-index rewrite,
    model_version unchanged until a release, which changes it exactly once."""
    from database_tools.releases import cut_release

    client, backend, root = loop
    services = backend.services
    first = _predict(client, root / "a.png")
    version0 = first["model_version"]
    base_version = services.knowledge().index.version
    region_id = first["result"][0]["id"]
    template = [dict(i) for i in first["result"] if i["id"] == region_id]
    seen = set()
    for i in range(N_WEBHOOKS):
        name = f"learnt name {i // 5}" if i % 5 == 0 else "zorblax"
        result = copy.deepcopy(template)
        for item in result:
            if item["type"] == "textarea":
                item["value"]["text"] = [name]
        payload = {"action": "ANNOTATION_CREATED", "project": {"id": 5},
                   "task": {"id": 1000 + i, "data": {}},
                   "annotation": {"id": 5000 + i, "result": result, "task": 1000 + i,
                                  "updated_at": "2024-05-01T10:00:00Z"}}
        assert backend.worker.handle(payload) == "recorded"
        if i % 100 == 99:
            seen.add(client.post("/setup", json={"project": "5.1", "schema": CONFIG})
                     .json["model_version"])
    assert seen == {version0}
    assert services.knowledge().index.version == base_version  # never rewritten on this path
    assert services.knowledge().index.stats().entries >= 201  # zorblax + 200 new names (delta)
    # the next prediction already uses what was learnt (the repeated rename became an alias)
    after = _predict(client, root / "b.png")
    assert "zorblax" in [i["value"]["text"][0] for i in after["result"] if i["type"] == "textarea"]
    assert after["model_version"] == version0
    release, created = cut_release(services.store, note="weekly")
    assert created
    released = _predict(client, root / "b.png")["model_version"]
    versions = {client.post("/setup", json={"project": "5.1", "schema": CONFIG})
                .json["model_version"] for _ in range(3)} | {released}
    assert len(versions) == 1 and versions != {version0}
    assert cut_release(services.store)[1] is False  # nothing new: the version stays
