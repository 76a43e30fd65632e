"""Whole-project pre-labelling against a real Label Studio 1.23.2 (slow; CI runs it).

* "Retrieve Predictions" on 40 tasks with a /predict budget too small for them: the backend
  answers what fits, queues the rest, and pushes every prediction with the right model_version.
* ``tag-backend prelabel`` killed with SIGKILL mid-job and run again: the job finishes, no task
  is computed or pushed twice.
* ``prelabel`` on a finished project does nothing.
"""

from __future__ import annotations

import signal
import time

import pytest
import requests

from ls_server import data_dir_copy, ls_api, prelabel_process, start_backend, stop, wait_until

pytestmark = pytest.mark.slow


def _api(stack, method, path, **kw):
    return ls_api(stack["ls"], method, path, **kw)


def _project(stack, title: str, n: int) -> int:
    from scenes import flat_shapes

    project = _api(
        stack, "POST", "/api/projects", json={"title": title, "label_config": stack["config"]}
    )["id"]
    images = stack["root"] / f"images-{project}"
    images.mkdir()
    files = []
    for i in range(n):
        path = images / f"t{i}.png"
        flat_shapes(64, seed=i)[0].save(path)
        files.append((f"file{i}", (path.name, path.read_bytes(), "image/png")))
    for start in range(0, n, 20):
        _api(stack, "POST", f"/api/projects/{project}/import", files=files[start : start + 20])
    assert len(_tasks(stack, project)) == n
    return project


def _tasks(stack, project):
    return _api(stack, "GET", f"/api/tasks?project={project}&fields=all&page_size=1000")["tasks"]


def _versions_per_task(stack, project) -> dict[int, list[str]]:
    out = {}
    for task in _tasks(stack, project):
        preds = _api(stack, "GET", f"/api/predictions/?task={task['id']}")
        out[task["id"]] = [p["model_version"] for p in preds]
    return out


def test_retrieve_predictions_beyond_the_budget_pushes_all(ls_stack):
    project = _project(ls_stack, "budget", 40)
    data = data_dir_copy(ls_stack, "backend-data")
    be_proc, be_url = start_backend(
        ls_stack["root"], {**ls_stack["env"], "TAG_DATA_DIR": data, "TAG_PREDICT_BUDGET": "3"}
    )
    try:
        _api(ls_stack, "POST", "/api/ml", json={"url": be_url, "project": project, "title": "tag"})
        version = requests.get(be_url + "/versions", timeout=30).json()["versions"][0]
        started = time.time()
        _api(
            ls_stack,
            "POST",
            f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
            json={"selectedItems": {"all": True, "excluded": []}},
        )
        assert time.time() - started < 60  # answered within the budget, not after 40 images
        wait_until(
            lambda: all(_versions_per_task(ls_stack, project).values()), 3600, "all 40 predictions"
        )
        per_task = _versions_per_task(ls_stack, project)
        assert len(per_task) == 40
        assert all(v == [version] for v in per_task.values()), per_task  # one each, right version
        metrics = requests.get(be_url + "/metrics", timeout=30).text
        assert "tag_job_tasks_total" in metrics and "tag_queue_depth" in metrics
    finally:
        stop(be_proc)


def _prelabel(stack, project: int, data: str, **popen):
    return prelabel_process({**stack["env"], "TAG_DATA_DIR": data}, project, **popen)


def _done_rows(data: str) -> dict[int, tuple]:
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(f"sqlite:///{data}/concepts.db")
    try:
        if not inspect(engine).has_table("prelabel_tasks"):
            return {}  # the CLI has not created its queue yet
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT ls_task_id, finished_by, finished_at FROM "
                                     "prelabel_tasks WHERE status = 'done'")).all()
    finally:
        engine.dispose()
    return {int(r[0]): (r[1], r[2]) for r in rows}


def test_prelabel_killed_and_resumed_then_idempotent(ls_stack):
    # Enough tasks that the kill lands mid-job even when the engine is fast (batches of 2,
    # polled every 0.2 s).
    n_tasks = 30
    project = _project(ls_stack, "prelabel", n_tasks)
    data = data_dir_copy(ls_stack, "cli-data")
    first = _prelabel(ls_stack, project, data)
    try:
        wait_until(
            lambda: first.poll() is None and len(_done_rows(data)) >= 3,
            1800,
            "3 finished tasks before the kill",
            interval=0.2,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    before = _done_rows(data)
    assert 3 <= len(before) < n_tasks

    second = _prelabel(ls_stack, project, data)
    out, _ = second.communicate(timeout=3600)
    assert second.returncode == 0, out
    assert "joined job" in out
    after = _done_rows(data)
    assert sorted(after) == sorted(t["id"] for t in _tasks(ls_stack, project))
    for task_id, row in before.items():
        assert after[task_id] == row  # finished before the kill: not computed again
    per_task = _versions_per_task(ls_stack, project)
    versions = {v for vs in per_task.values() for v in vs}
    assert len(versions) == 1 and all(len(v) == 1 for v in per_task.values()), per_task

    third = _prelabel(ls_stack, project, data)
    out, _ = third.communicate(timeout=600)
    assert third.returncode == 0, out
    assert "nothing to do" in out and f"{n_tasks} already predicted" in out
    assert _versions_per_task(ls_stack, project) == per_task
