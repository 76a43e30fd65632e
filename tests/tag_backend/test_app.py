"""Flask test-client tests of every route and bad input (tiny models, no Label Studio)."""

from __future__ import annotations

import base64

import pytest
from label_studio_sdk.converter.brush import decode_rle

from tag_backend.app import app_backend, create_app

from ls_helpers import CONFIG, FakeServer, shared_services


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from scenes import flat_shapes

    root = tmp_path_factory.mktemp("imgs")
    for i, size in enumerate((96, 112, 128)):
        flat_shapes(size, seed=i)[0].save(root / f"s{i}.png")
    (root / "text.png").write_text("not an image")
    return root


def make_app(session, tmp_path, images, **changes):
    """An app on the session's store and index; /predict computes every task (no job-queue
    budget: the budget path is tested with the jobs engine)."""
    changes.setdefault("predict_budget_seconds", 1e9)
    changes.setdefault("url_allowlist", "127.0.0.1")  # test image servers are on loopback
    services = shared_services(session, tmp_path / "srv", allowed_local_roots=str(images),
                               **changes)
    return create_app(services=services, start_worker=False)


@pytest.fixture()
def client(tiny_services_session, tmp_path, images):
    return make_app(tiny_services_session, tmp_path, images).test_client()


def test_health_metrics_versions_and_unknown_routes(client):
    for path in ("/", "/health"):
        assert client.get(path).json == {"status": "UP", "model_class": "TagBackend"}
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain; version=0.0.4")
    assert b"tag_tasks_predicted_total" in r.data
    assert client.get("/versions").json["versions"][0].startswith("tag-")
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405


def test_setup(client, tiny_services_session):
    r = client.post(
        "/setup",
        json={
            "project": "3.1700000000",
            "schema": CONFIG,
            "extra_params": {"a": 1},
            "hostname": "http://x",
            "access_token": "t",
        },
    )
    assert r.status_code == 200
    assert r.json["model_version"] == tiny_services_session.model_version()
    r = client.post(
        "/setup", json={"project": "3.1", "schema": "<View><Image name='i' value='$i'/></View>"}
    )
    assert r.status_code == 400 and "BrushLabels" in r.json["detail"]
    r = client.post("/setup", data=b"{not json", content_type="application/json")
    assert r.status_code == 400 and "JSON" in r.json["detail"]


def test_predict_one_result_per_task_in_order(client, images, tiny_services_session):
    server = FakeServer()
    try:
        tasks = [
            {"id": 1, "data": {"image": str(images / "s1.png")}},
            {"id": 2, "data": {"text": "no image field"}},
            {"id": 3, "data": {"image": server.url + "/missing.png"}},
            {"id": 4, "data": {"image": str(images / "text.png")}},
            {"id": 5, "data": {"image": str(images / "s0.png")}},
            "not a task",
        ]
        r = client.post(
            "/predict",
            json={
                "tasks": tasks,
                "label_config": CONFIG,
                "project": "1.1",
                "params": {"login": None, "password": None, "context": None},
            },
        )
    finally:
        server.close()
    assert r.status_code == 200
    results = r.json["results"]
    assert len(results) == len(tasks)
    assert [bool(x["result"]) for x in results] == [True, False, False, False, True, False]
    assert all(x["model_version"] == tiny_services_session.model_version() for x in results)
    for item in results[0]["result"]:
        assert item["original_width"] == 112 and item["original_height"] == 112
        assert item["to_name"] == "image" and item["from_name"] in ("tag", "name")
        if item["type"] == "brushlabels":
            mask = decode_rle(item["value"]["rle"]).reshape(112, 112, 4)[:, :, 3]
            assert mask.any() and item["value"]["brushlabels"] == ["object"]
        else:
            assert item["value"]["text"][0].strip()
    ids = [i["id"] for i in results[0]["result"]]
    assert len(set(ids)) * 2 == len(ids)
    assert results[1] == {"result": [], "score": 0.0, "model_version": results[0]["model_version"]}


def test_predict_many_tasks_and_bad_payloads(client, images):
    tasks = [{"id": i, "data": {"image": str(images / "s0.png")}} for i in range(8)]
    r = client.post("/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert r.status_code == 200 and len(r.json["results"]) == 8
    assert all(x["result"] for x in r.json["results"])
    assert client.post("/predict", json={"label_config": CONFIG}).status_code == 400
    assert client.post("/predict", data=b"[1,", content_type="application/json").status_code == 400
    r = client.post("/predict", json={"tasks": tasks[:1], "label_config": "<View/>"})
    assert r.status_code == 400 and "Image" in r.json["detail"]
    assert client.get("/health").status_code == 200  # still alive


def test_guided_mode_snaps_to_project_labels(tiny_services_session, tmp_path, images):
    config = (
        '<View><Image name="img" value="$photo"/><BrushLabels name="b" toName="img">'
        '<Label value="cat"/><Label value="dog"/><Label value="thing"/></BrushLabels></View>'
    )
    task = {"id": 1, "data": {"photo": str(images / "s2.png")}}
    loose = make_app(
        tiny_services_session, tmp_path / "a", images, guided_threshold=0.0
    ).test_client()
    items = loose.post("/predict", json={"tasks": [task], "label_config": config}).json["results"][
        0
    ]["result"]
    assert items and all(i["value"]["brushlabels"][0] in ("cat", "dog", "thing") for i in items)
    assert all(i["from_name"] == "b" and i["to_name"] == "img" for i in items)
    strict = make_app(
        tiny_services_session, tmp_path / "b", images, guided_threshold=1.0, guided_below="drop"
    ).test_client()
    assert (
        strict.post("/predict", json={"tasks": [task], "label_config": config}).json["results"][0][
            "result"
        ]
        == []
    )
    fallback = make_app(
        tiny_services_session, tmp_path / "c", images, guided_threshold=1.0, guided_fallback="thing"
    ).test_client()
    items = fallback.post("/predict", json={"tasks": [task], "label_config": config}).json[
        "results"
    ][0]["result"]
    assert items and {i["value"]["brushlabels"][0] for i in items} == {"thing"}
    kept = make_app(
        tiny_services_session, tmp_path / "d", images, guided_threshold=1.0
    ).test_client()
    items = kept.post("/predict", json={"tasks": [task], "label_config": config}).json[
        "results"
    ][0]["result"]
    assert items and not {i["value"]["brushlabels"][0] for i in items} & {"cat", "dog", "thing"}


def _basic(user, pw):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


def test_basic_auth_and_webhook_secret(tiny_services_session, tmp_path, images):
    app = make_app(
        tiny_services_session,
        tmp_path,
        images,
        basic_auth_user="u",
        basic_auth_pass="p",
        webhook_secret="s3cret",
    )
    c = app.test_client()
    for method, path in (
        ("get", "/metrics"),
        ("post", "/setup"),
        ("post", "/predict"),
        ("get", "/versions"),
        ("post", "/webhook"),
    ):
        r = getattr(c, method)(path, json={})
        assert r.status_code == 401, path
        if path != "/webhook":
            assert r.headers["WWW-Authenticate"].startswith("Basic")
    # Liveness needs no credentials (Docker HEALTHCHECK) and says nothing about the setup.
    for path in ("/", "/health"):
        assert c.get(path).json == {"status": "UP", "model_class": "TagBackend"}
    assert c.get("/metrics", headers=_basic("u", "wrong")).status_code == 401
    assert c.get("/metrics", headers=_basic("u", "p")).status_code == 200
    event = {"action": "PROJECT_UPDATED", "project": {"id": 1}}
    assert (
        c.post("/webhook", json=event, headers={"X-Tag-Webhook-Secret": "s3cret"}).status_code
        == 200
    )
    assert c.post("/webhook?token=s3cret", json=event).status_code == 200
    assert c.post("/webhook?token=nope", json=event).status_code == 401
    assert c.post("/webhook", json=event, headers=_basic("u", "p")).status_code == 200


def test_webhook_acknowledges_fast_and_persists(client):
    backend = app_backend(client.application)
    assert client.post("/webhook", json={"action": "TASKS_CREATED"}).json == {
        "status": "Unknown event"
    }
    assert client.post("/webhook", data=b"{{", content_type="application/json").status_code == 400
    payload = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 99999},
        "annotation": {"id": 7, "result": [], "updated_at": "2024-01-01T00:00:00Z"},
        "task": {"id": 1, "data": {}},
    }
    r = client.post("/webhook", json=payload)
    assert r.status_code == 201 and r.json["status"] == "ok"
    # Acknowledged before any learning ran (Label Studio waits 1 s): the payload is still queued.
    assert backend.spool.depth() == 1
    client.post("/webhook", json=payload)  # delivered twice
    assert backend.spool.depth() == 1  # persisted before answering, once
    # Payloads that could never be recorded are refused, not acknowledged and dropped later.
    for action in (
        "ANNOTATIONS_CREATED",
        "ANNOTATIONS_DELETED",
        "ANNOTATION_DELETED",
        "ANNOTATION_UPDATED",
        "START_TRAINING",  # this backend has no Label Studio credentials to re-ingest with
    ):
        r = client.post("/webhook", json={"action": action, "project": {"id": 1}})
        assert r.status_code == 422, action
        assert action in r.json["detail"] or "LABEL_STUDIO_URL" in r.json["detail"]
    assert backend.spool.depth() == 1


def test_setup_answers_while_the_engine_loads(tiny_settings):
    """Label Studio gives /setup 3 s: it must not wait for the models, which load for longer."""
    import threading

    from tag_backend.services import Services

    services = Services(tiny_settings)
    app = create_app(services=services, start_worker=False)
    loading, release = threading.Event(), threading.Event()

    def hold_the_engine_lock():  # what a long model load does
        with services._lock:
            loading.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_engine_lock)
    holder.start()
    try:
        assert loading.wait(10)
        answers: list = []
        caller = threading.Thread(
            target=lambda: answers.append(
                app.test_client().post("/setup", json={"project": "1", "schema": CONFIG})))
        caller.start()
        caller.join(30)  # a deadlock bound, not a speed check
        assert answers and answers[0].status_code == 200, "/setup waited for the engine"
        assert answers[0].json["model_version"].startswith("tag-")
    finally:
        release.set()
        holder.join()
        services.close()
