"""Planning and batched pushes against a real Label Studio 1.23.2 (slow; CI runs it).

The Data Manager filter ``prelabel`` sends must leave out exactly the tasks that hold a
prediction of the current model version and (``unlabeled``) the annotated ones, with
``fields="task_only"``; ``projects.import_predictions`` must create one prediction per task in
one request, and refuse a whole batch holding a deleted task (so the pusher falls back).
"""
from __future__ import annotations

import pytest
import requests

from ls_server import TOKEN, start_label_studio, stop

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Token {TOKEN}"}


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    proc, url = start_label_studio(tmp_path_factory.mktemp("e2e-planning"))
    try:
        yield url
    finally:
        stop(proc)


def _api(url, method, path, **kw):
    r = requests.request(method, url + path, headers=HEADERS, timeout=120, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r.json() if r.content else None


def test_filtered_listing_and_batched_pushes(ls):
    from tag_backend.jobs.prelabel import iter_tasks, needs_work_query
    from tag_backend.jobs.push import FAILED, PUSHED, LabelStudioPusher
    from tag_backend.ls import recommended_label_config

    project = _api(ls, "POST", "/api/projects",
                   json={"title": "planning", "label_config": recommended_label_config()})["id"]
    _api(ls, "POST", f"/api/projects/{project}/import",
         json=[{"image": f"/data/local-files/?d=x/{i}.png"} for i in range(8)])
    ids = sorted(t["id"] for t in _api(
        ls, "GET", f"/api/tasks?project={project}&page_size=100")["tasks"])
    version, other = "tag-1.0-fast-db3", "tag-1.0-fast-db2"
    pusher = LabelStudioPusher(ls, TOKEN)
    client = pusher.client()
    for task in ids[:2]:  # predicted with the current version: skipped
        client.predictions.create(task=task, result=[], score=0.1, model_version=version)
    client.predictions.create(task=ids[2], result=[], score=0.1, model_version=other)
    client.annotations.create(id=ids[3], result=[])  # labeled: skipped by "unlabeled"

    def listed(filter_):
        return sorted(t["id"] for t in iter_tasks(client, project, page_size=3,
                                                  query=needs_work_query(version, filter_)))

    assert listed("unlabeled") == [ids[2]] + ids[4:]
    assert listed("all") == ids[2:]
    first = next(iter_tasks(client, project, query=needs_work_query(version, "all")))
    assert "predictions" not in first or not first["predictions"]  # task_only: nothing heavy

    item = {"result": [], "score": 0.5, "model_version": version}
    before = pusher.requests
    assert pusher.push_batch(project, [(t, item) for t in ids[4:]]).outcome == PUSHED
    assert pusher.requests == before + 1
    assert listed("all") == [ids[2], ids[3]]  # the batch's tasks now hold the version
    _api(ls, "DELETE", f"/api/tasks/{ids[3]}/")
    refused = pusher.push_batch(project, [(ids[2], item), (ids[3], item)])
    assert refused.outcome == FAILED  # nothing created: the pusher re-sends one by one
    assert listed("all") == [ids[2]]
