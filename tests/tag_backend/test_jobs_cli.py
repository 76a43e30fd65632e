"""`tag-backend prelabel` / `jobs` through click, and push-failure classification."""
from __future__ import annotations

import socket
import threading

import httpx
import pytest
from click.testing import CliRunner
from flask import Flask, jsonify, request
from label_studio_sdk.core.api_error import ApiError
from werkzeug.serving import make_server

from tag_backend.cli import main
from tag_backend.jobs.prelabel import has_version, is_labeled
from tag_backend.jobs.push import AUTH, FAILED, GONE, RETRY, classify

TOKEN = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def fake_ls():
    """Projects API: project 1 exists, others are 404; a wrong token gets 401."""
    app = Flask("fake-ls")

    @app.get("/api/projects/<int:pid>/")
    def project(pid):
        if request.headers.get("Authorization") != f"Token {TOKEN}":
            return jsonify({"detail": "Invalid token."}), 401
        if pid != 1:
            return jsonify({"detail": "Not found."}), 404
        return jsonify({"id": 1, "title": "p", "label_config": "<View></View>"})

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _run(args, tmp_path, **env):
    base = {"TAG_DATA_DIR": str(tmp_path / "data"), "TAG_LOG_LEVEL": "WARNING"}
    return CliRunner().invoke(main, args, env={**base, **env})


def test_prelabel_reports_token_project_and_connection_problems(tmp_path, fake_ls):
    bad = _run(["prelabel", "--project", "1"], tmp_path, LABEL_STUDIO_URL=fake_ls,
               LABEL_STUDIO_API_KEY="f" * 40)
    assert bad.exit_code == 1 and "refused the token (HTTP 401)" in bad.output
    missing = _run(["prelabel", "--project", "9"], tmp_path, LABEL_STUDIO_URL=fake_ls,
                   LABEL_STUDIO_API_KEY=TOKEN)
    assert missing.exit_code == 1 and "project 9: not found in Label Studio" in missing.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = _run(["prelabel", "--project", "1"], tmp_path,
                LABEL_STUDIO_URL=f"http://127.0.0.1:{closed}", LABEL_STUDIO_API_KEY=TOKEN)
    assert down.exit_code == 1 and "Label Studio unreachable" in down.output
    unset = _run(["prelabel", "--project", "1"], tmp_path, LABEL_STUDIO_URL="",
                 LABEL_STUDIO_API_KEY="")
    assert unset.exit_code == 1 and "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY" in unset.output
    config = _run(["prelabel", "--project", "1"], tmp_path, LABEL_STUDIO_URL=fake_ls,
                  LABEL_STUDIO_API_KEY=TOKEN)
    assert config.exit_code == 1 and "<Image>" in config.output  # config TAG cannot fill


def test_jobs_purge(tmp_path):
    import time

    from database_tools.store import Store

    from tag_backend.jobs.queue import JobQueue
    from tag_backend.jobs.schema import Job

    store = Store(f"sqlite:///{tmp_path / 'data' / 'concepts.db'}")
    queue = JobQueue.from_store(store)
    job = queue.create_job("prelabel", [{"id": 5, "data": {}}], label_config="<View/>",
                           model_version="v", project_id=4)
    queue.cancel(job)
    with store.engine.begin() as conn:
        conn.execute(Job.__table__.update().values(updated_at=time.time() - 3 * 86400))
    bad = _run(["jobs", "purge", "--older-than", "soon"], tmp_path)
    assert bad.exit_code == 2 and "expected a number with s, m, h, d or w" in bad.output
    kept = _run(["jobs", "purge", "--older-than", "7d", "--quiet"], tmp_path)
    assert kept.exit_code == 0 and "purged 0 job(s), 0 task row(s)" in kept.output
    gone = _run(["jobs", "purge", "--older-than", "2d", "--quiet"], tmp_path)
    assert gone.exit_code == 0 and "purged 1 job(s), 1 task row(s)" in gone.output
    assert queue.list_jobs() == []
    store.close()


def test_jobs_list_show_cancel(tmp_path):
    from database_tools.store import Store

    from tag_backend.jobs.queue import JobQueue

    store = Store(f"sqlite:///{tmp_path / 'data' / 'concepts.db'}")
    queue = JobQueue.from_store(store)
    job = queue.create_job("prelabel", [{"id": 5, "data": {}}, {"id": 6, "data": {}}],
                           label_config="<View/>", model_version="v9", project_id=4)
    (claim, _) = queue.claim("w", 2)
    queue.fail(claim, "w", "HTTP 404 on image", retry=False)
    store.close()
    listed = _run(["jobs", "list"], tmp_path)
    assert listed.exit_code == 0 and f"{job:>5} prelabel" in listed.output
    shown = _run(["jobs", "show", str(job)], tmp_path)
    assert shown.exit_code == 0 and "model_version v9" in shown.output
    assert "task 5: HTTP 404 on image" in shown.output
    cancelled = _run(["jobs", "cancel", str(job)], tmp_path)
    assert cancelled.exit_code == 0 and "cancelled (0 queued task(s) dropped)" in cancelled.output
    unknown = _run(["jobs", "show", "77"], tmp_path)
    assert unknown.exit_code == 1 and "no job 77" in unknown.output


def test_jobs_work_loads_the_models_before_claiming_anything(tmp_path):
    """A worker whose models cannot load stops with the reason; the queue is untouched (it
    must not claim, and fail, tasks other workers can compute)."""
    from database_tools.store import Store

    from tag_backend.jobs.queue import JobQueue

    store = Store(f"sqlite:///{tmp_path / 'data' / 'concepts.db'}")
    queue = JobQueue.from_store(store)
    job = queue.create_job("prelabel", [{"id": 5, "data": {"image": "x.png"}}],
                           label_config="<View/>", model_version="v", project_id=4)
    result = _run(["jobs", "work"], tmp_path, TAG_DINO_MODEL=str(tmp_path / "no-dino"),
                  TAG_DEVICE="cpu")
    assert result.exit_code == 1, result.output
    assert "cannot load DINOv2 weights" in result.output and "running" not in result.output
    progress = queue.progress(job)
    assert (progress.queued, progress.running, progress.failed) == (1, 0, 0)
    (claim,) = queue.claim("other", 1)
    assert claim.attempts == 1  # no attempt was spent by the worker that could not load
    store.close()


@pytest.mark.parametrize("exc,outcome", [
    (ApiError(status_code=404, body={"detail": "Not found."}), GONE),
    (ApiError(status_code=403, body={}), AUTH),
    (ApiError(status_code=401, body={}), AUTH),
    (ApiError(status_code=503, body="down"), RETRY),
    (ApiError(status_code=429, body=""), RETRY),
    (ApiError(status_code=400, body={"result": ["bad"]}), FAILED),
    (httpx.ConnectError("connection refused"), RETRY),
    (httpx.ReadTimeout("timed out"), RETRY),
])
def test_push_failures_are_classified(exc, outcome):
    assert classify(exc).outcome == outcome


def test_prediction_version_and_labeled_checks():
    task = {"predictions": [{"model_version": "a"}, {"model_version": "b"}], "total_annotations": 0}
    assert has_version(task, "b") and not has_version(task, "c")
    assert has_version({"predictions_model_versions": "x, y"}, "y")
    assert not is_labeled(task)
    assert is_labeled({"total_annotations": 2}) and is_labeled({"annotations": [{"id": 1}]})


@pytest.fixture()
def paged_ls():
    """Projects + paginated tasks API (404 past the last page, like DRF in Label Studio) with
    the two Data Manager filters planning sends, applied as Label Studio 1.23 does
    (``predictions__model_version__contains`` per value; ``total_annotations`` equal), and
    ``fields=task_only`` answered without predictions or annotations."""
    import json

    from tag_backend.ls import recommended_label_config

    state = {"version": None, "tasks": [], "queries": []}
    app = Flask("fake-ls-tasks")

    @app.get("/api/projects/<int:pid>/")
    def project(pid):
        return jsonify({"id": pid, "title": "p", "label_config": recommended_label_config(),
                        "task_number": len(state["tasks"])})

    def matches(task, item):
        if item["filter"] == "filter:tasks:predictions_model_versions":
            assert item["operator"] == "not_contains"
            return not any(v in p["model_version"] for p in task["predictions"]
                           for v in item["value"])
        assert item["filter"] == "filter:tasks:total_annotations", item
        return task["total_annotations"] == item["value"]

    @app.get("/api/tasks/")
    def list_tasks():
        page, size = int(request.args["page"]), int(request.args["page_size"])
        assert request.args["fields"] == "task_only"
        query = json.loads(request.args["query"])
        state["queries"].append(query)
        items = query["filters"]["items"]
        tasks = [{k: v for k, v in t.items() if k != "predictions"} for t in state["tasks"]
                 if all(matches(t, item) for item in items)]
        chunk = tasks[(page - 1) * size: page * size]
        if page > 1 and not chunk:
            return jsonify({"detail": "Invalid page."}), 404
        return jsonify({"tasks": chunk, "total": len(state["tasks"]), "total_annotations": 0,
                        "total_predictions": 0})

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()


def test_plan_skips_predicted_and_labeled_tasks_and_joins_the_active_job(tiny_settings, paged_ls):
    from tag_backend.jobs.prelabel import plan_prelabel
    from tag_backend.jobs.push import LabelStudioPusher
    from tag_backend.jobs.queue import JobQueue
    from tag_backend.services import Services

    services = Services(tiny_settings)
    version = services.model_version()
    paged_ls["tasks"] = [
        {"id": i, "data": {"image": f"/data/upload/1/{i}.png"},
         "predictions": [{"model_version": version if i % 5 == 0 else "old", "result": []}],
         "total_annotations": 1 if i % 7 == 0 else 0, "is_labeled": i % 7 == 0}
        for i in range(1, 251)]
    queue = JobQueue.from_store(services.store)
    pusher = LabelStudioPusher(paged_ls["url"], TOKEN)
    plan = plan_prelabel(services, queue, pusher, 1, filter="unlabeled")
    predicted = {i for i in range(1, 251) if i % 5 == 0}
    labeled = {i for i in range(1, 251) if i % 7 == 0} - predicted
    assert plan.seen == 250 - len(predicted) - len(labeled)  # Label Studio filtered them out
    assert (plan.already_predicted, plan.labeled) == (0, 0)
    assert plan.skipped == len(predicted) + len(labeled) and plan.ls_requests == 0
    assert plan.queued == 250 - len(predicted) - len(labeled) and not plan.joined
    assert pusher.requests == 2  # the project + one page of up to 1,000 tasks
    again = plan_prelabel(services, queue, pusher, 1, filter="all")  # a second run joins
    assert again.joined and again.job_id == plan.job_id and again.queued == len(labeled)
    assert queue.progress(plan.job_id).total == 250 - len(predicted)
    limited = plan_prelabel(services, queue, pusher, 2, filter="all", limit=10)
    assert limited.queued == 10 and limited.seen == 10 and limited.job_id != plan.job_id
    assert limited.skipped is None  # the listing stopped early: nothing known about the rest
    with pytest.raises(ValueError):
        plan_prelabel(services, queue, pusher, 1, filter="some")


def test_refresh_plan_queues_exactly_the_unlabeled_tasks_made_stale(tiny_settings, paged_ls):
    from database_tools.corrections import record_annotation
    from database_tools.curation import set_concept_status
    from database_tools.prediction_log import RegionConcept, record_prediction
    from tag_backend.jobs.prelabel import plan_prelabel
    from tag_backend.jobs.push import LabelStudioPusher
    from tag_backend.jobs.queue import JobQueue
    from store_helpers import add_entries, get_entry
    from tag_backend.services import Services

    services = Services(tiny_settings)
    store = services.store
    add_entries(store, "concept", ["dog", "cat", "cow"])
    ids = {n: get_entry(store, "concept", n).id for n in ("dog", "cat", "cow")}
    concept_of = {i: "dog" if i <= 10 else "cat" if i <= 20 else "cow" for i in range(1, 41)}
    seq = store.db_version()
    for i, name in concept_of.items():
        record_prediction(store, project="1", task=str(i), model_version=services.model_version(),
                          knowledge_seq=seq, regions=[RegionConcept(f"r{i}", ids[name], name)])
    labeled = {5, 15, 25}
    paged_ls["tasks"] = [
        {"id": i, "data": {"image": f"/data/upload/1/{i}.png"},
         "predictions": [{"model_version": services.model_version(), "result": []}],
         "total_annotations": int(i in labeled), "is_labeled": i in labeled}
        for i in range(1, 41)]
    region = [{"id": "r5", "type": "brushlabels", "from_name": "tag", "to_name": "image",
               "value": {"format": "rle", "rle": [0], "brushlabels": ["object"]}},
              {"id": "r5", "type": "textarea", "from_name": "name", "to_name": "image",
               "value": {"text": ["wolf"]}}]
    record_annotation(store, {"action": "ANNOTATION_CREATED", "project": {"id": 1},
                              "annotation": {"id": 1, "task": 5, "result": region,
                                             "updated_at": "2026-01-01T00:00:00Z"}})
    set_concept_status(store, ["cat"], "rejected")
    queue = JobQueue.from_store(store)
    pusher = LabelStudioPusher(paged_ls["url"], TOKEN)
    plan = plan_prelabel(services, queue, pusher, 1, refresh=True)
    expected = {i for i, name in concept_of.items() if name in ("dog", "cat")} - labeled
    queued = {c.ls_task_id for c in queue.claim("test", 100)}
    assert plan.refresh and plan.queued == len(expected) and queued == expected
    # labeled tasks are left out by the Data Manager filter already
    assert (plan.seen, plan.labeled, plan.already_predicted) == (37, 0, 37 - len(expected))
