"""The team set-up of docs/scale.md, all real processes on loopback (slow; CI runs it).

Three ``tag-backend serve`` replicas (A, B, C: own ports and ``TAG_DATA_DIR``) and two
``tag-backend jobs work`` processes share one PostgreSQL (``TAG_DB_URL``) and one index store
(``TAG_INDEX_STORE``), next to one real Label Studio 1.23.2 whose ML backend is replica A.

**A 200-task pre-labelling job survives ``kill -9`` of a replica and a worker.** The job is
started the way a team starts it through Label Studio: "Retrieve Predictions" on the whole
project sends one ``/predict`` with all 200 tasks to replica A, which computes what fits in its
``TAG_PREDICT_BUDGET`` (3 s) and queues the rest as a job that every replica's worker and both
``jobs work`` processes share (docs/scale.md: "with workers attached they compute only what
fits in ``TAG_PREDICT_BUDGET`` and queue the rest"). ``tag-backend prelabel`` would add a sixth
process doing the same work; the story of the issue is replicas plus workers. Midway — some
tasks recorded, many still queued, both victims holding leases — replica C and one worker get
SIGKILL; the other processes must finish the job after the victims' leases expire (30 s).

* Exactly one prediction per task, read back from Label Studio's API.
* **No task is computed again after its result was recorded.** Every computation by a job
  worker starts with a claim, and a claim increments the task's ``attempts`` and sets it
  ``running``; recording sets ``status='done'``, ``finished_at`` and ``finished_by`` (the
  recording worker's ``host:pid:id``) — columns of the documented ``prelabel_tasks`` table
  (docs/jobs.md). The test polls that table every 0.3 s and keeps each task's state as first
  seen recorded; a later claim would change ``attempts`` (and the status), a second recording
  ``finished_at``/``finished_by``, so every task must end exactly as first seen recorded. The
  tasks the victims held at the kill must have been claimed again and recorded by a survivor.
  (A result that a worker finishes after losing its lease is dropped by the conditional write
  and never recorded or pushed; no counter is needed to see that nothing was recomputed.)

**A correction sent to one replica changes the next prediction served by another.** The
annotation is submitted in Label Studio, whose webhook goes to replica A (created by Label
Studio when A was connected); once the correction is recorded (the shared concept database's
version moved, the ``webhook_events`` queue is empty), the very next ``/predict`` of replica B
on a near-identical image names the region with the corrected name.

Replicas B and C have a large budget: the test calls them directly, and their single-image
answer must be computed inline whatever the machine's load (A's small budget is what turns
"Retrieve Predictions" into a job).
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from ls_server import (
    TOKEN,
    start_backend,
    start_job_worker,
    start_label_studio,
    stop,
    wait_job_worker,
    wait_ready,
)
from pg_server import new_pg_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
HEADERS = {"Authorization": f"Token {TOKEN}"}
N_TASKS = 200
VOCABULARY = "cat\ndog\nsky\ngrass\ncar\ntree\nroad\nwall\nboat\nbird\n"
CORRECTED = "zorblax widget"


@dataclass
class Team:
    root: Path
    ls: str
    db_url: str
    replicas: dict[str, tuple] = field(default_factory=dict)  # name -> (process, url)
    workers: dict[str, object] = field(default_factory=dict)  # name -> process

    def url(self, name: str) -> str:
        return self.replicas[name][1]

    def processes(self) -> dict[str, object]:
        return {**{n: p for n, (p, _) in self.replicas.items()}, **self.workers}

    def logs(self) -> str:
        return " ".join(str(self.root / f"{name}.log") for name in self.processes())


@pytest.fixture(scope="module")
def team(tmp_path_factory, tiny_models_dir, postgres_server):
    root = tmp_path_factory.mktemp("e2e-team")
    db_url = new_pg_database(postgres_server)
    (root / "vocabulary.txt").write_text(VOCABULARY)
    (root / "index-store").mkdir()  # the shared mount every node sees
    ls_proc, ls_url = start_label_studio(root)
    team = Team(root, ls_url, db_url)
    common = {
        "TAG_DINO_MODEL": tiny_models_dir["dino"],
        "TAG_CLIP_MODEL": tiny_models_dir["clip"],
        "TAG_DEVICE": "cpu",
        "TAG_DTYPE": "float32",
        "TAG_DB_URL": db_url,
        "TAG_INDEX_STORE": str(root / "index-store"),
        "TAG_DEFAULT_VOCABULARY": str(root / "vocabulary.txt"),
        "LABEL_STUDIO_URL": ls_url,
        "LABEL_STUDIO_API_KEY": TOKEN,
        "HF_HUB_OFFLINE": "1",
    }
    try:
        # Everything starts at once, as `docker compose up` would start it.
        for name, budget in (("a", "3"), ("b", "900"), ("c", "900")):
            env = {**common, "TAG_DATA_DIR": str(root / name), "TAG_PREDICT_BUDGET": budget}
            team.replicas[name] = start_backend(root, env, name=name, wait=False)
        for name in ("w1", "w2"):
            team.workers[name] = start_job_worker(
                root, {**common, "TAG_DATA_DIR": str(root / name)}, name)
        for name, (proc, url) in team.replicas.items():
            wait_ready(proc, url, root, name, timeout=900)
        for name, proc in team.workers.items():
            wait_job_worker(proc, root, name, timeout=900)
        yield team
    finally:
        for proc in team.processes().values():
            stop(proc)
        stop(ls_proc)


def _api(team: Team, method: str, path: str, **kw):
    r = requests.request(method, team.ls + path, headers=HEADERS, timeout=900, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r.json() if r.content else None


def _project(team: Team, title: str, images: list[Image.Image], backend: str | None) -> int:
    from tag_backend.ls import recommended_label_config

    project = _api(team, "POST", "/api/projects",
                   json={"title": title, "label_config": recommended_label_config()})["id"]
    folder = team.root / f"images-{project}"
    folder.mkdir()
    files = []
    for i, image in enumerate(images):
        path = folder / f"t{i}.png"
        image.save(path)
        files.append((f"file{i}", (path.name, path.read_bytes(), "image/png")))
    for start in range(0, len(files), 20):
        _api(team, "POST", f"/api/projects/{project}/import", files=files[start:start + 20])
    if backend is not None:
        _api(team, "POST", "/api/ml", json={"url": team.url(backend), "project": project,
                                            "title": "tag"})
    return project


def _tasks(team: Team, project: int) -> list[dict]:
    return _api(team, "GET", f"/api/tasks?project={project}&page_size=1000")["tasks"]


def _predictions(team: Team, project: int) -> dict[int, list[dict]]:
    """Every prediction of the project, by task id."""
    answer = _api(team, "GET", f"/api/predictions/?project={project}")
    items = answer["results"] if isinstance(answer, dict) else answer
    out: dict[int, list[dict]] = {}
    for prediction in items:
        out.setdefault(int(prediction["task"]), []).append(prediction)
    return out


def _retrieve(team: Team, project: int) -> None:
    _api(team, "POST", f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
         json={"selectedItems": {"all": True, "excluded": []}})


def _wait(predicate, timeout: float, what: str, team: Team, interval: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (logs: {team.logs()})")


# --------------------------------------------------------------------------- the queue's rows
@dataclass(frozen=True)
class Row:
    status: str
    attempts: int
    finished_at: float | None
    finished_by: str | None
    lease_owner: str | None
    push_status: str | None

    @property
    def recorded(self) -> tuple:
        return self.attempts, self.finished_at, self.finished_by


def _pid(worker_id: str | None) -> int | None:
    """The process of a worker id (``host:pid:random``)."""
    return int(worker_id.split(":")[-2]) if worker_id else None


class QueueWatch:
    """Reads the project's job rows from the shared database."""

    def __init__(self, db_url: str, project: int) -> None:
        from sqlalchemy import create_engine

        self.engine = create_engine(db_url)
        self.project = project
        self.first_recorded: dict[int, tuple] = {}

    def rows(self) -> dict[int, Row]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            found = conn.execute(text(
                "SELECT t.ls_task_id, t.status, t.attempts, t.finished_at, t.finished_by, "
                "t.lease_owner, t.push_status FROM prelabel_tasks t JOIN prelabel_jobs j "
                "ON j.id = t.job_id WHERE j.project_id = :project"), {"project": self.project})
            rows = {int(r[0]): Row(*r[1:]) for r in found}
        for task, row in rows.items():
            if row.status == "done":
                self.first_recorded.setdefault(task, row.recorded)
        return rows

    def job_status(self) -> list[str]:
        from sqlalchemy import text

        with self.engine.connect() as conn:
            return list(conn.scalars(text("SELECT status FROM prelabel_jobs WHERE project_id = "
                                          ":project"), {"project": self.project}))

    def close(self) -> None:
        self.engine.dispose()


def _leases_of(rows: dict[int, Row], pid: int) -> set[int]:
    return {t for t, r in rows.items() if r.status == "running" and _pid(r.lease_owner) == pid}


def _recorded_by(rows: dict[int, Row], pid: int) -> set[int]:
    return {t for t, r in rows.items() if r.status == "done" and _pid(r.finished_by) == pid}


def test_a_job_survives_a_killed_replica_and_worker_without_recomputing(team):
    from scenes import flat_shapes

    project = _project(team, "team scale", [flat_shapes(64, seed=i)[0] for i in range(N_TASKS)],
                       backend="a")
    all_tasks = {t["id"] for t in _tasks(team, project)}
    assert len(all_tasks) == N_TASKS
    version = requests.get(team.url("a") + "/versions", timeout=60).json()["versions"][0]
    victims = {"c": team.replicas["c"][0], "w1": team.workers["w1"]}
    victim_pids = {p.pid for p in victims.values()}
    watch = QueueWatch(team.db_url, project)
    errors: list[BaseException] = []

    def retrieve():
        try:
            _retrieve(team, project)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    retrieving = threading.Thread(target=retrieve, daemon=True)
    retrieving.start()
    try:
        # Midway: work recorded, much still queued, both victims in the middle of tasks.
        deadline = time.time() + 1800
        while True:
            rows = watch.rows()
            done = sum(r.status == "done" for r in rows.values())
            queued = sum(r.status == "queued" for r in rows.values())
            holding = all(_leases_of(rows, p.pid) for p in victims.values())
            recorded = all(_recorded_by(rows, p.pid) for p in victims.values())
            if holding and ((done >= 20 and recorded) or (rows and queued < 100)):
                break
            assert not errors, errors
            assert time.time() < deadline, f"the job did not get going (logs: {team.logs()})"
            time.sleep(0.3)
        for proc in victims.values():
            proc.send_signal(signal.SIGKILL)
        for proc in victims.values():
            proc.wait(30)
        at_kill = watch.rows()
        in_flight = {t for p in victim_pids for t in _leases_of(at_kill, p)}
        queued_at_kill = sum(r.status == "queued" for r in at_kill.values())
        assert in_flight and queued_at_kill >= 50, (len(in_flight), queued_at_kill)

        retrieving.join(900)
        assert not retrieving.is_alive() and not errors, errors

        def settled() -> bool:
            rows = watch.rows()
            return bool(rows) and all(r.status == "done" and r.push_status == "pushed"
                                      for r in rows.values())

        _wait(settled, 1800, "every queued task recorded and pushed", team, interval=0.3)
        _wait(lambda: watch.job_status() == ["done"], 300, "the job to be marked done", team)
        final = watch.rows()
    finally:
        watch.close()

    # Exactly one prediction per task in Label Studio, of the current version: the tasks A
    # computed inline came back in its reply, the job's tasks were pushed.
    predictions = _predictions(team, project)
    assert set(predictions) == all_tasks
    counts = {task: len(p) for task, p in predictions.items() if len(p) != 1}
    assert not counts, f"tasks without exactly one prediction: {counts}"
    assert {p[0]["model_version"] for p in predictions.values()} == {version}
    assert len(final) >= N_TASKS // 2, len(final)  # most of the work went through the job

    # Nothing recorded was claimed, computed or recorded again: every task ends as it was
    # first seen recorded (those recorded before the kill among them).
    assert watch.first_recorded.keys() == final.keys()
    changed = {t: (watch.first_recorded[t], final[t].recorded) for t in final
               if final[t].recorded != watch.first_recorded[t]}
    assert not changed, f"recorded again after their first record: {changed}"
    before_kill = {t: r.recorded for t, r in at_kill.items() if r.status == "done"}
    assert all(final[t].recorded == rec for t, rec in before_kill.items())
    # What the victims had in flight was claimed again and recorded by a survivor.
    for task in in_flight:
        assert _pid(final[task].finished_by) not in victim_pids, (task, final[task])
        assert final[task].attempts > at_kill[task].attempts, (task, final[task])


# --------------------------------------------------------------------------- corrections
def _names(item: dict) -> list[str]:
    return [r["value"]["text"][0] for r in item["result"] if r["type"] == "textarea"]


def _predict(team: Team, replica: str, task: dict) -> dict:
    from tag_backend.ls import recommended_label_config

    reply = requests.post(team.url(replica) + "/predict", timeout=900, json={
        "tasks": [task], "label_config": recommended_label_config()})
    assert reply.status_code == 200, reply.text[:500]
    (item,) = reply.json()["results"]
    assert isinstance(item, dict) and item["result"], item  # computed inline, not queued
    return item


def _db_version(team: Team) -> int:
    from database_tools.store import Store

    store = Store(team.db_url, migrate=False)
    try:
        return store.db_version()
    finally:
        store.close()


def _correction_recorded(team: Team, version_before: int) -> bool:
    """The concept database moved past ``version_before`` and no webhook event is waiting."""
    from sqlalchemy import create_engine, text

    engine = create_engine(team.db_url)
    try:
        with engine.connect() as conn:
            events = dict(conn.execute(text(
                "SELECT status, count(*) FROM webhook_events GROUP BY status")).all())
    finally:
        engine.dispose()
    assert "failed" not in events, events
    return _db_version(team) > version_before and not events


def test_a_correction_sent_to_one_replica_changes_the_next_prediction_of_another(team):
    from scenes import flat_shapes

    image = flat_shapes(120, seed=7)[0]
    near = np.asarray(image).astype(np.int16)
    near = near + np.random.default_rng(1).integers(-2, 3, near.shape)
    near_image = Image.fromarray(np.clip(near, 0, 255).astype(np.uint8))
    project = _project(team, "team correction", [image], backend="a")
    hooks = _api(team, "GET", f"/api/webhooks/?project={project}")
    assert [h["url"] for h in hooks] == [team.url("a") + "/webhook"]  # corrections go to A
    probe_project = _project(team, "team probe", [near_image], backend=None)
    (probe,) = _tasks(team, probe_project)
    probe = {"id": probe["id"], "data": probe["data"]}

    _retrieve(team, project)
    (task,) = _tasks(team, project)
    _wait(lambda: _predictions(team, project).get(task["id"]), 900, "the task's prediction", team)
    (prediction,) = _predictions(team, project)[task["id"]]
    before = _predict(team, "b", probe)
    assert CORRECTED not in _names(before)

    result = copy.deepcopy(prediction["result"])
    target = result[0]["id"]
    for item in result:
        if item["id"] == target and item["type"] == "textarea":
            item["value"]["text"] = [CORRECTED]
    version = _db_version(team)
    _api(team, "POST", f"/api/tasks/{task['id']}/annotations",
         json={"result": result, "parent_prediction": prediction["id"], "lead_time": 3})
    _wait(lambda: _correction_recorded(team, version), 900, "the correction to be recorded",
          team)

    after = _predict(team, "b", probe)  # B's next prediction
    assert CORRECTED in _names(after), _names(after)
    assert after["model_version"] == before["model_version"]  # learnt live, not released
