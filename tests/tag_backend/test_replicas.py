"""Two backend replicas (two apps, each with its own services and data directory) on one real
PostgreSQL: a correction posted to replica A goes through the shared webhook queue, may be
applied by either replica's correction worker, and changes the next prediction replica B
serves."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from ls_helpers import CONFIG
from pg_server import new_pg_database
from tag_backend.app import app_backend, create_app

pytestmark = pytest.mark.postgres


def _replica(settings, name, tmp_path):
    app = create_app(settings.replace(data_dir=str(tmp_path / name)), start_worker=False)
    return app.test_client(), app_backend(app)


def _predict(client, path):
    reply = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": str(path)}}],
                                          "label_config": CONFIG})
    assert reply.status_code == 200, reply.json
    return reply.json["results"][0]


def test_a_correction_sent_to_one_replica_changes_the_next_prediction_of_another(
        tiny_settings, postgres_server, tmp_path):
    from scenes import flat_shapes

    from tag_backend.ls.webhook_db_queue import DbWebhookQueue

    img, _ = flat_shapes(120, seed=3)
    img.save(tmp_path / "a.png")
    near = np.asarray(img).astype(np.int16) + np.random.default_rng(0).integers(-2, 3, img.size[::-1] + (3,))
    Image.fromarray(np.clip(near, 0, 255).astype(np.uint8)).save(tmp_path / "b.png")
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("cat\ndog\nsky\ngrass\ncar\ntree\nroad\nwall\n")
    settings = tiny_settings.replace(
        db_url=new_pg_database(postgres_server), default_vocabulary=str(vocabulary),
        allowed_local_roots=str(tmp_path), predict_budget_seconds=1e9)
    client_a, replica_a = _replica(settings, "a", tmp_path)
    client_b, replica_b = _replica(settings, "b", tmp_path)
    try:
        assert isinstance(replica_a.spool, DbWebhookQueue)
        before = _predict(client_b, tmp_path / "a.png")
        result = copy.deepcopy(before["result"])
        target = result[0]["id"]
        for item in result:
            if item["id"] == target and item["type"] == "textarea":
                item["value"]["text"] = ["zorblax widget"]
        payload = {
            "action": "ANNOTATION_CREATED", "project": {"id": 5},
            "task": {"id": 1, "data": {"image": str(tmp_path / "a.png")},
                     "predictions": [{"id": 11, "result": before["result"]}]},
            "annotation": {"id": 21, "result": result, "updated_at": "2024-05-01T10:00:00Z",
                           "parent_prediction": 11, "completed_by": 1},
        }
        assert client_a.post("/webhook", json=payload).status_code == 201
        assert replica_b.spool.depth() == 1  # replica B sees the event A received
        assert replica_b.worker.run_once() is True  # and may apply it
        assert replica_a.worker.run_once() is False  # applied once
        after = _predict(client_b, tmp_path / "b.png")
        texts = [i["value"]["text"][0] for i in after["result"] if i["type"] == "textarea"]
        assert "zorblax widget" in texts
        # Learning is live between knowledge releases: the version names the release, not the
        # database counter (docs/learning.md).
        assert after["model_version"] == before["model_version"]
        again = _predict(client_a, tmp_path / "b.png")  # replica A follows the database too
        assert "zorblax widget" in [i["value"]["text"][0] for i in again["result"]
                                    if i["type"] == "textarea"]
    finally:
        replica_a.services.close()
        replica_b.services.close()
