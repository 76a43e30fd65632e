"""`tag-backend ls-connect` against a real Label Studio 1.23.2: from a folder of images to
predictions on every task with no other step, and a second run that changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from ls_server import TOKEN, free_port, start_backend, start_label_studio, stop, tiny_backend_env

pytestmark = pytest.mark.slow
HEADERS = {"Authorization": f"Token {TOKEN}"}
REPO = Path(__file__).resolve().parents[2]
SECRET = "connect-e2e-secret"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_models_dir, tiny_services_session):
    from scenes import flat_shapes

    root = tmp_path_factory.mktemp("connect")
    images = root / "images"
    (images / "nested").mkdir(parents=True)
    for i, folder in enumerate((images, images, images / "nested")):
        flat_shapes(128, seed=10 + i)[0].save(folder / f"scene{i}.png")
    (images / "notes.txt").write_text("not an image: the storage filter skips it")
    backend_env = {**tiny_backend_env(root, tiny_models_dir, tiny_services_session), "TAG_WEBHOOK_SECRET": SECRET}
    ls_proc, ls_url = start_label_studio(root)
    be_proc, be_url = start_backend(root, {**backend_env, "LABEL_STUDIO_URL": ls_url})
    try:
        yield {"root": root, "images": images, "ls": ls_url, "backend": be_url}
    finally:
        stop(be_proc)
        stop(ls_proc)


def _connect(stack, *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TAG_", "LABEL_STUDIO_"))}
    base.update({"LABEL_STUDIO_URL": stack["ls"], "LABEL_STUDIO_API_KEY": TOKEN, "TAG_BACKEND_URL": stack["backend"],
                 "TAG_WEBHOOK_SECRET": SECRET})
    return subprocess.run([sys.executable, "-m", "tag_backend", "ls-connect", *args], env=base, cwd=REPO,
                          capture_output=True, text=True, timeout=900)


def _get(stack, path):
    r = requests.get(stack["ls"] + path, headers=HEADERS, timeout=60)
    assert r.status_code == 200, (path, r.status_code, r.text[:300])
    return r.json()


def _state(stack, project: int) -> dict:
    tasks = _get(stack, f"/api/tasks?project={project}&fields=all&page_size=100")["tasks"]
    return {
        "projects": sorted(p["id"] for p in _get(stack, "/api/projects?page_size=100")["results"]),
        "tasks": sorted((t["id"], t["data"]["image"]) for t in tasks),
        "predictions": sorted((t["id"], p["id"]) for t in tasks for p in t["predictions"]),
        "storages": [s["id"] for s in _get(stack, f"/api/storages/localfiles?project={project}")],
        "ml": [(m["id"], m["url"], m["is_interactive"]) for m in _get(stack, f"/api/ml?project={project}")],
        "webhooks": [(w["id"], w["url"], w["headers"]) for w in _get(stack, f"/api/webhooks?project={project}")],
        "config": _get(stack, f"/api/projects/{project}")["label_config"],
    }


def _project_id(out: str) -> int:
    line = next(line for line in out.splitlines() if line.startswith("project "))
    return int(line.split()[1].rstrip(":"))


def test_one_command_gives_predictions_on_every_task_and_a_second_run_changes_nothing(stack):
    from tag_backend.ls.connect import SHIPPED_CONFIG

    first = _connect(stack, "--images", str(stack["images"]), "--title", "Connect e2e", "--prelabel")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "created project" in first.stdout and "imported 3 task(s)" in first.stdout
    project = _project_id(first.stdout)
    state = _state(stack, project)
    assert len(state["tasks"]) == 3  # notes.txt is not a task; nested/ is scanned
    assert all(url.startswith("/data/local-files/?d=images") for _, url in state["tasks"])
    tasks = _get(stack, f"/api/tasks?project={project}&fields=all&page_size=100")["tasks"]
    for task in tasks:
        assert task["predictions"], f"task {task['id']} has no prediction"
        result = task["predictions"][0]["result"]
        assert any(item["type"] == "brushlabels" for item in result), task["id"]
    assert state["config"].strip() == SHIPPED_CONFIG.read_text().strip()
    assert [(url, interactive) for _, url, interactive in state["ml"]] == [(stack["backend"], True)]
    hooks = [h for h in state["webhooks"] if h[1].startswith(stack["backend"])]
    assert hooks and hooks[0][2].get("X-Tag-Webhook-Secret") == SECRET

    second = _connect(stack, "--images", str(stack["images"]), "--title", "Connect e2e", "--prelabel")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing to change" in second.stdout, second.stdout
    assert _project_id(second.stdout) == project
    assert _state(stack, project) == state

    # New images are picked up by running the same command again.
    from scenes import flat_shapes

    flat_shapes(128, seed=42)[0].save(stack["images"] / "later.png")
    third = _connect(stack, "--project", str(project), "--images", str(stack["images"]), "--prelabel")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "imported 1 task(s)" in third.stdout
    tasks = _get(stack, f"/api/tasks?project={project}&fields=all&page_size=100")["tasks"]
    assert len(tasks) == 4 and all(t["predictions"] for t in tasks)


@pytest.mark.parametrize("args, env, expected", [
    ((), {"LABEL_STUDIO_API_KEY": "0" * 40}, "LABEL_STUDIO_API_KEY"),
    ((), {"LABEL_STUDIO_URL": "http://127.0.0.1:{closed}"}, "LABEL_STUDIO_URL"),
    (("--images", "/"), {}, "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"),
    (("--project", "999999"), {}, "--project"),
    (("--backend-url", "http://127.0.0.1:{closed}"), {}, "--backend-url"),
])
def test_failures_name_the_setting_to_change(stack, args, env, expected):
    closed = str(free_port())
    args = tuple(a.replace("{closed}", closed) for a in args)
    env = {k: v.replace("{closed}", closed) for k, v in env.items()}
    if "--images" not in args and "--project" not in args:
        args = ("--images", str(stack["images"]), "--title", "Connect failures", *args)
    # In-process (the command itself runs as a subprocess above): same code, no interpreter start-up.
    from tag_backend.cli import main

    cleared = {k: None for k in os.environ if k.startswith(("TAG_", "LABEL_STUDIO_"))}
    env = {**cleared, "LABEL_STUDIO_URL": stack["ls"], "LABEL_STUDIO_API_KEY": TOKEN,
           "TAG_BACKEND_URL": stack["backend"], **env}
    result = CliRunner().invoke(main, ["ls-connect", *args], env=env)
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
