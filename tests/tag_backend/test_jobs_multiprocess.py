"""Two real ``tag-backend jobs work`` processes on one real PostgreSQL and one shared index
store: one is killed with SIGKILL mid-job; the other finishes the job; every task is recorded
exactly once and nothing recorded before the kill is computed again."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pg_server import new_pg_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
N_TASKS = 8


def _worker(name: str, root: Path, env: dict) -> subprocess.Popen:
    log = open(root / f"{name}.log", "wb")
    return subprocess.Popen(
        [sys.executable, "-m", "tag_backend", "jobs", "work", "--batch-size", "2"],
        env={**os.environ, **env, "TAG_DATA_DIR": str(root / name)}, cwd=REPO,
        stdout=log, stderr=subprocess.STDOUT)


def _rows(store, job):
    from tag_backend.jobs.schema import JobTask

    with store.engine.connect() as conn:
        return {r.ls_task_id: r for r in conn.execute(
            select(JobTask.ls_task_id, JobTask.status, JobTask.finished_by, JobTask.finished_at,
                   JobTask.attempts).where(JobTask.job_id == job))}


def test_a_killed_worker_loses_only_its_batch(postgres_server, tiny_models_dir, tmp_path):
    from scenes import flat_shapes

    from database_tools.store import Store
    from tag_backend.jobs.queue import JobQueue
    from tag_backend.jobs.schema import CachedPrediction
    from tag_backend.ls import recommended_label_config

    url = new_pg_database(postgres_server)
    images = tmp_path / "images"
    images.mkdir()
    tasks = []
    for i in range(1, N_TASKS + 1):
        flat_shapes(96, seed=i)[0].save(images / f"{i}.png")
        tasks.append({"id": i, "data": {"image": str(images / f"{i}.png")}})
    vocabulary = tmp_path / "vocab.txt"
    vocabulary.write_text("cat\ndog\nsky\ngrass\ncar\ntree\n")
    (tmp_path / "index-store").mkdir()
    store = Store(url)
    queue = JobQueue.from_store(store)
    job = queue.create_job("prelabel", tasks, label_config=recommended_label_config(),
                           model_version="x", push=False)
    env = {"TAG_DB_URL": url, "TAG_DINO_MODEL": tiny_models_dir["dino"],
           "TAG_CLIP_MODEL": tiny_models_dir["clip"], "TAG_DEVICE": "cpu",
           "TAG_DTYPE": "float32", "TAG_ALLOWED_LOCAL_ROOTS": str(images),
           "TAG_DEFAULT_VOCABULARY": str(vocabulary), "TAG_INDEX_STORE": str(tmp_path / "index-store"),
           "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "HF_HUB_OFFLINE": "1"}
    doomed, survivor = _worker("doomed", tmp_path, env), None
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # let the first worker record a few tasks alone
            done = {i: r for i, r in _rows(store, job).items() if r.status == "done"}
            if len(done) >= 3:
                break
            assert doomed.poll() is None, (tmp_path / "doomed.log").read_text()[-3000:]
            time.sleep(0.5)
        survivor = _worker("survivor", tmp_path, env)
        time.sleep(2)
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(30)
        before = {i: r for i, r in _rows(store, job).items() if r.status == "done"}
        assert len(before) >= 3
        deadline = time.time() + 600
        while time.time() < deadline and not queue.progress(job).settled:
            assert survivor.poll() is None, (tmp_path / "survivor.log").read_text()[-3000:]
            time.sleep(1)
        rows = _rows(store, job)
        assert sorted(rows) == list(range(1, N_TASKS + 1))
        assert all(r.status == "done" for r in rows.values()), {
            i: r.status for i, r in rows.items()}
        for task_id, row in before.items():  # recorded before the kill: never computed again
            assert (rows[task_id].finished_by, rows[task_id].finished_at) == (
                row.finished_by, row.finished_at)
        doomed_ids = {r.finished_by for r in before.values()}
        assert all(rows[i].finished_by not in doomed_ids for i in rows if i not in before)
        with store.engine.connect() as conn:  # one stored result per task
            assert conn.scalar(select(func.count()).select_from(CachedPrediction)) == N_TASKS
        # The index the workers used was published to the shared store, verified copies pulled.
        assert list((tmp_path / "index-store").rglob("files.json"))
    finally:
        for proc in (doomed, survivor):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        store.close()
