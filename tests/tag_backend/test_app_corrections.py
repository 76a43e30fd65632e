"""The correction loop through the app: webhook -> spool -> worker -> store/index -> predict."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from tag_backend.app import app_backend, create_app

from ls_helpers import CONFIG, copy_services


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


def test_rename_is_learned_and_changes_model_version(loop):
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
    assert setup["model_version"] != version0
    after = _predict(client, root / "b.png")
    texts = [i["value"]["text"][0] for i in after["result"] if i["type"] == "textarea"]
    assert "zorblax widget" in texts
    assert after["model_version"] == setup["model_version"]
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
