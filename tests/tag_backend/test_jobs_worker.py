"""The worker end to end on the tiny real engine, pushing through the real SDK to a local
HTTP server that speaks Label Studio's predictions API and misbehaves on purpose."""
from __future__ import annotations

import threading
import time

import pytest
from flask import Flask, jsonify, request
from jobs_fixtures import jobs_db_url, jobs_store, make_queue  # noqa: F401
from werkzeug.serving import make_server

from tag_backend.jobs.push import LabelStudioPusher
from tag_backend.jobs.queue import JobQueue, QueuePolicy
from tag_backend.jobs.worker import Worker, WorkerOptions
from tag_backend.ls import recommended_label_config

TOKEN = "0123456789abcdef0123456789abcdef01234567"


class FakeLabelStudio:
    """POST/GET /api/predictions/ and POST /api/projects/<id>/import/predictions: task 404 is
    deleted (a batch holding it is refused with 400, as Label Studio validates every task id
    before creating anything), task 500 fails once, 401 without token."""

    def __init__(self) -> None:
        self.created: list[dict] = []
        self.flaky_left = 1
        self.requests = 0
        app = Flask("fake-ls")

        @app.before_request
        def count():
            self.requests += 1

        @app.post("/api/projects/<int:pid>/import/predictions")
        def import_predictions(pid):
            if request.headers.get("Authorization") != f"Token {TOKEN}":
                return jsonify({"detail": "no"}), 401
            body = request.get_json()
            if any(p["task"] == 404 for p in body):
                return jsonify({"detail": "invalid 'task' field"}), 400
            if any(p["task"] == 500 for p in body) and self.flaky_left:
                self.flaky_left -= 1
                return jsonify({"detail": "boom"}), 500
            self.created.extend(body)
            return jsonify({"created": len(body)}), 201

        @app.post("/api/predictions/")
        def create():
            if request.headers.get("Authorization") != f"Token {TOKEN}":
                return jsonify({"detail": "no"}), 401
            body = request.get_json()
            if body["task"] == 404:
                return jsonify({"detail": "Not found."}), 404
            if body["task"] == 500 and self.flaky_left:
                self.flaky_left -= 1
                return jsonify({"detail": "boom"}), 500
            self.created.append(body)
            return jsonify({"id": len(self.created), **body}), 201

        @app.get("/api/predictions/")
        def list_():
            task = int(request.args["task"])
            return jsonify([{"id": i + 1, **p} for i, p in enumerate(self.created)
                            if p["task"] == task])

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def fake_ls():
    ls = FakeLabelStudio()
    yield ls
    ls.server.shutdown()


def _images(root):
    from scenes import flat_shapes

    good = []
    for i in range(3):
        path = root / f"img{i}.png"
        flat_shapes(96, seed=i)[0].save(path)
        good.append(str(path))
    broken = root / "broken.png"
    broken.write_bytes(b"not a png")
    return good, str(broken)


def _work_until_settled(queue, services, settings, job: int, batch_size: int) -> Worker:
    """Run a worker (pushing to ``settings``' Label Studio) until ``job`` is settled."""
    worker = Worker(queue, services, LabelStudioPusher.from_settings(settings),
                    WorkerOptions(batch_size=batch_size, prefetch=batch_size,
                                  poll_seconds=0.2)).start()
    try:
        deadline = time.time() + 900
        while not queue.progress(job).settled and time.time() < deadline:
            time.sleep(0.3)
    finally:
        worker.stop()
    return worker


def test_worker_computes_retries_and_pushes(tiny_settings, tmp_path, fake_ls):
    from tag_backend.services import Services

    good, broken = _images(tmp_path)
    settings = tiny_settings.replace(allowed_local_roots=str(tmp_path),
                                     label_studio_url=fake_ls.url, label_studio_api_key=TOKEN)
    services = Services(settings)
    queue = JobQueue.from_store(services.store, QueuePolicy(lease_seconds=30, max_attempts=2,
                                                           backoff_base=0.2))
    tasks = [{"id": 1, "data": {"image": good[0]}}, {"id": 404, "data": {"image": good[1]}},
             {"id": 500, "data": {"image": good[2]}}, {"id": 7, "data": {"image": broken}},
             {"id": 8, "data": {"text": "no image"}}]
    config = recommended_label_config()
    job = queue.create_job("prelabel", tasks, label_config=config, model_version="x",
                           project_id=1)
    worker = _work_until_settled(queue, services, settings, job, batch_size=4)
    p = queue.progress(job)
    assert (p.done, p.failed, p.queued, p.running) == (3, 2, 0, 0)
    assert (p.pushed, p.push_gone, p.push_pending) == (2, 1, 0)
    failures = dict(queue.failures(job))
    assert "no 'image' image URL" in failures[8]
    assert failures[7] and failures[404].startswith("task or project not found")
    version = services.model_version()
    assert sorted(c["task"] for c in fake_ls.created) == [1, 500]  # once each, 500 after retry
    for created in fake_ls.created:
        assert created["model_version"] == version
        kinds = {r["type"] for r in created["result"]}
        assert kinds <= {"brushlabels", "textarea"} and created["result"]
    assert worker.stats.retried == 1 and worker.stats.done == 3
    queue.finish_settled_jobs()  # the worker's heartbeat may have finished the job already
    assert queue.get_job(job).status == "done"


def _finished_job(queue, ids, project_id=1):
    items = [{"id": i, "data": {}} for i in ids]
    job = queue.create_job("prelabel", items, label_config="<View/>", model_version="v",
                           project_id=project_id, keys=[f"k{i}" for i in ids])
    for claim in queue.claim("w", len(ids)):
        item = {"result": [{"id": str(claim.ls_task_id)}], "score": 0.5, "model_version": "v"}
        assert queue.complete(claim, "w", item, f"k{claim.ls_task_id}")
    return job


def _push_all(queue, pusher):
    from tag_backend.jobs.push_queue import claim_pushes, push_claims

    while claims := claim_pushes(queue, "w", 100):
        push_claims(queue, pusher, "w", claims)


def test_pushes_are_batched_and_pushed_results_dropped(jobs_store, fake_ls, monkeypatch):
    """120 finished tasks of one project take 3 import requests of at most 50 (the batch size
    is lowered to keep the test short), each result pushed once and then dropped from the
    store; a batch holding a deleted task is refused and re-sent one by one, so only that task
    is 'gone' (its result stays until a purge)."""
    from tag_backend.jobs import push_queue
    from tag_backend.jobs.schema import CachedPrediction

    monkeypatch.setattr(push_queue, "PUSH_BATCH", 50)
    queue = make_queue(jobs_store)
    good = list(range(1000, 1120))
    job = _finished_job(queue, good)
    pusher = LabelStudioPusher(fake_ls.url, TOKEN)
    _push_all(queue, pusher)
    assert sorted(c["task"] for c in fake_ls.created) == good
    assert pusher.requests == fake_ls.requests == 3
    assert queue.progress(job).pushed == 120

    mixed = _finished_job(queue, [404, 1200, 1201])
    _push_all(queue, pusher)
    p = queue.progress(mixed)
    assert (p.pushed, p.push_gone, p.push_pending) == (2, 1, 0)
    assert pusher.requests == fake_ls.requests == 3 + 1 + 3  # refused batch, then one by one
    assert sorted(c["task"] for c in fake_ls.created) == good + [1200, 1201]
    with jobs_store.engine.connect() as conn:
        left = [r.cache_key for r in conn.execute(CachedPrediction.__table__.select())]
    assert left == ["k404"]


def test_predict_over_budget_queues_then_answers_from_the_store(tiny_settings, tmp_path):
    """/predict with a zero budget: items are [] (queued, in order), the in-process worker
    computes them, and the same request is then answered from the store."""
    from tag_backend.app import app_backend, create_app

    good, _ = _images(tmp_path)
    settings = tiny_settings.replace(allowed_local_roots=str(tmp_path))
    settings = type(settings)(**{**settings.__dict__, "predict_budget_seconds": 0.0})
    app = create_app(settings, start_worker=False)
    services = app_backend(app).services
    client = app.test_client()
    body = {"tasks": [{"id": 11, "data": {"image": good[0]}},
                      {"id": 12, "data": {"image": good[1]}}],
            "label_config": recommended_label_config(), "project": "3.1700000000"}
    try:
        first = client.post("/predict", json=body)
        assert first.status_code == 200 and first.json["results"] == [[], []]
        deadline = time.time() + 900
        while time.time() < deadline:
            results = client.post("/predict", json=body).json["results"]
            if all(isinstance(r, dict) for r in results):
                break
            time.sleep(1)
        assert [bool(r["result"]) for r in results] == [True, True]
        assert all(r["model_version"] == services.model_version() for r in results)
        for _ in range(20):  # gauges are set right after the last result is recorded
            metrics = client.get("/metrics").data.decode()
            if 'tag_queue_depth{queue="prelabel"} 0.0' in metrics:
                break
            time.sleep(0.5)
        assert 'tag_job_tasks_total{outcome="done"}' in metrics
        assert 'tag_queue_depth{queue="prelabel"} 0.0' in metrics
        assert "tag_index_entries" in metrics and "tag_concept_db_version" in metrics
    finally:
        services.close()


def test_refresh_pushes_only_the_predictions_that_changed(tiny_settings, tmp_path, fake_ls):
    """A ``refresh`` job recomputes its tasks but pushes a result only when Label Studio does
    not already show it (same regions and names; region ids and scores do not count)."""
    from tag_backend.jobs.schema import PRELABEL, REFRESH
    from tag_backend.services import Services

    good, _ = _images(tmp_path)
    settings = tiny_settings.replace(allowed_local_roots=str(tmp_path),
                                     label_studio_url=fake_ls.url, label_studio_api_key=TOKEN)
    services = Services(settings)
    queue = JobQueue.from_store(services.store)
    tasks = [{"id": i + 1, "data": {"image": path}} for i, path in enumerate(good)]
    config, version = recommended_label_config(), services.model_version()

    def run(kind):
        job = queue.create_job(kind, tasks, label_config=config, model_version=version,
                               project_id=1)
        worker = _work_until_settled(queue, services, settings, job, batch_size=3)
        return queue.progress(job), worker.stats

    first, _ = run(PRELABEL)
    assert (first.pushed, first.unchanged) == (3, 0)
    stored = {p["task"]: p for p in fake_ls.created}
    for item in stored[1]["result"]:
        item["score"] = 0.01  # another score only: still the same prediction
    renamed = next(i for i in stored[2]["result"] if i["type"] == "textarea")
    renamed["value"] = {"text": ["something else"]}  # what LS shows differs: push
    stored[3]["model_version"] = "tag-older-release"  # no prediction of this version: push
    progress, stats = run(REFRESH)
    assert (progress.done, progress.pushed, progress.unchanged) == (3, 2, 1)
    assert stats.unchanged == 1
    assert sorted(p["task"] for p in fake_ls.created[3:]) == [2, 3]
    fresh = {p["task"]: p for p in fake_ls.created[3:]}
    assert fresh[2]["model_version"] == version and fresh[2]["result"]


def test_a_retried_push_skips_only_a_prediction_label_studio_already_shows(fake_ls):
    """The retry check compares content: the prediction a lost answer created is not pushed
    twice, but a refresh replacing an older prediction of the same version is pushed."""
    def item(rid, name):
        return {"model_version": "v", "score": 0.5, "result": [
            {"id": rid, "from_name": "name", "to_name": "image", "type": "textarea",
             "value": {"text": [name]}}]}

    fake_ls.created.append({"task": 9, **item("a1", "dog")})
    pusher = LabelStudioPusher(fake_ls.url, TOKEN)
    assert pusher.push(9, item("b2", "dog"), check_existing=True).detail == "already present"
    assert len(fake_ls.created) == 1
    assert pusher.push(9, item("c3", "wolf"), check_existing=True).detail == ""
    assert [p["result"][0]["value"]["text"] for p in fake_ls.created] == [["dog"], ["wolf"]]
