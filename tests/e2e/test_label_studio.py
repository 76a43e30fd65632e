"""End to end against a real Label Studio 1.23.2 on loopback (slow; CI runs it).

Project with the recommended config, 3 uploaded images, the backend connected through the
API exactly as the UI does it, "Retrieve Predictions", an annotation that renames a region,
and a new prediction that uses the correction. Screenshots of the labeling page are kept in
tests/artifacts/ (and copied to docs/img/ when TAG_E2E_DOCS_IMG=1).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from ls_server import PASSWORD, TOKEN, USER, start_backend, start_label_studio, stop, tiny_backend_env

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
HEADERS = {"Authorization": f"Token {TOKEN}"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_models_dir, tiny_services_session):
    from tag_backend.ls import recommended_label_config

    root = tmp_path_factory.mktemp("e2e")
    backend_env = {
        **tiny_backend_env(root, tiny_models_dir, tiny_services_session),
        # compute every task inside /predict (the budgeted job path has its own tests)
        "TAG_PREDICT_BUDGET": "3600",
    }
    ls_proc, ls_url = start_label_studio(root)
    be_proc, be_url = start_backend(root, {**backend_env, "LABEL_STUDIO_URL": ls_url})
    try:
        yield {"root": root, "ls": ls_url, "backend": be_url, "config": recommended_label_config()}
    finally:
        stop(be_proc)
        stop(ls_proc)


def _api(stack, method, path, **kw):
    r = requests.request(method, stack["ls"] + path, headers=HEADERS, timeout=900, **kw)
    assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text[:500]}"
    return r.json() if r.content else None


def _images(root: Path) -> list[Path]:
    from scenes import flat_shapes

    paths = []
    for i in range(3):
        path = root / f"img{i}.png"
        flat_shapes(160, seed=i)[0].save(path)
        paths.append(path)
    return paths


def _upload(stack, project, path):
    with open(path, "rb") as fh:
        return _api(
            stack, "POST", f"/api/projects/{project}/import", files={"file": (path.name, fh)}
        )


def _tasks(stack, project):
    return _api(stack, "GET", f"/api/tasks?project={project}&fields=all&page_size=100")["tasks"]


def _retrieve(stack, project):
    return _api(
        stack,
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": True, "excluded": []}},
    )


def _names(prediction) -> list[str]:
    return [i["value"]["text"][0] for i in prediction["result"] if i["type"] == "textarea"]


def test_predict_correct_and_learn(stack):
    project = _api(
        stack, "POST", "/api/projects", json={"title": "TAG e2e", "label_config": stack["config"]}
    )["id"]
    for path in _images(stack["root"]):
        _upload(stack, project, path)
    _api(
        stack, "POST", "/api/ml", json={"url": stack["backend"], "project": project, "title": "TAG"}
    )
    _retrieve(stack, project)
    tasks = _tasks(stack, project)
    assert len(tasks) == 3
    for task in tasks:
        assert task["predictions"], f"task {task['id']} has no prediction"
        pred = task["predictions"][-1]
        assert pred["result"] and _names(pred)
        for item in pred["result"]:
            if item["type"] == "brushlabels":
                w, h = item["original_width"], item["original_height"]
                assert (w, h) == (160, 160)
                assert decode_rle(item["value"]["rle"]).reshape(h, w, 4)[:, :, 3].any()
    _screenshot(stack, project, tasks[0]["id"], "ls_predictions.png")

    version0 = requests.post(
        stack["backend"] + "/setup", json={"project": f"{project}.1", "schema": stack["config"]}
    ).json()
    db_metric0 = _metric(stack, "tag_concept_db_version")
    task = tasks[0]
    pred = task["predictions"][-1]
    result = copy.deepcopy(pred["result"])
    target = result[0]["id"]
    for item in result:
        if item["id"] == target and item["type"] == "textarea":
            item["value"]["text"] = ["zorblax widget"]
    _api(
        stack,
        "POST",
        f"/api/tasks/{task['id']}/annotations",
        json={"result": result, "parent_prediction": pred["id"], "lead_time": 3},
    )
    deadline = time.time() + 300
    while time.time() < deadline and _metric(stack, "tag_concept_db_version") <= db_metric0:
        time.sleep(2)
    assert _metric(stack, "tag_concept_db_version") > db_metric0, "the correction was not learnt"
    version1 = requests.post(
        stack["backend"] + "/setup", json={"project": f"{project}.1", "schema": stack["config"]}
    ).json()
    # learnt live, not released: predictions made before the correction stay current
    assert version1["model_version"] == version0["model_version"], "a correction changed it"
    assert all(t["predictions"][-1]["model_version"] == version1["model_version"]
               for t in _tasks(stack, project))
    hist_sum, hist_count = (
        _metric(stack, "tag_webhook_seconds_sum"),
        _metric(stack, "tag_webhook_seconds_count"),
    )
    assert hist_count >= 1 and hist_sum / hist_count < 0.5, "webhook acknowledged too slowly"
    _screenshot(stack, project, task["id"], "ls_correction.png")

    near = np.asarray(Image.open(stack["root"] / "img0.png")).astype(np.int16)
    near = near + np.random.default_rng(1).integers(-2, 3, near.shape)
    near_path = stack["root"] / "img0_near.png"
    Image.fromarray(np.clip(near, 0, 255).astype(np.uint8)).save(near_path)
    _upload(stack, project, near_path)
    _retrieve(stack, project)
    new = [t for t in _tasks(stack, project) if t["data"]["image"].endswith("img0_near.png")][0]
    pred = new["predictions"][-1]
    assert pred["model_version"] == version1["model_version"]
    assert "zorblax widget" in _names(pred)
    _screenshot(stack, project, new["id"], "ls_learned.png")


def _metric(stack, name: str) -> float:
    text = requests.get(stack["backend"] + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _screenshot(stack, project: int, task_id: int, name: str) -> None:
    """Log in through the form and capture the labeling page (needs chromium + playwright)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = None
    if not chromium:
        warnings.warn("chromium/playwright missing: no screenshot of the labeling page")
        return
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(stack["ls"] + "/user/login/")
        page.fill("input[name=email]", USER)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{stack['ls']}/projects/{project}/data?task={task_id}")
        page.wait_for_timeout(8000)
        regions = page.locator("[class*=region]").first
        try:
            regions.click(timeout=3000)
            page.wait_for_timeout(1000)
        except Exception:
            pass
        page.screenshot(path=str(ARTIFACTS / name))
        browser.close()
    if os.environ.get("TAG_E2E_DOCS_IMG") == "1":
        docs = Path(__file__).resolve().parents[2] / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(ARTIFACTS / name, docs / name)


def test_interactive_click_through_label_studio(stack):
    """A smart-tool click sent through Label Studio's own interactive API
    (``POST /api/ml/<id>/interactive-annotating``, what the labeling UI calls): Label Studio
    forwards the context to ``/predict`` and hands back ``results[0]``."""
    from tag_backend.ls import interactive_label_config

    project = _api(stack, "POST", "/api/projects",
                   json={"title": "TAG interactive", "label_config": interactive_label_config()})["id"]
    _upload(stack, project, _images(stack["root"])[1])
    ml = _api(stack, "POST", "/api/ml", json={"url": stack["backend"], "project": project,
                                               "title": "TAG", "is_interactive": True})
    (task,) = _tasks(stack, project)
    x, y = 80, 115  # inside the disc of flat_shapes(160)
    click = {"original_width": 160, "original_height": 160, "image_rotation": 0,
             "value": {"x": 100 * x / 160, "y": 100 * y / 160, "width": 0.6,
                       "keypointlabels": ["object"]},
             "is_positive": True, "id": "clk0000001", "from_name": "click", "to_name": "image",
             "type": "keypointlabels", "origin": "manual"}
    answer = _api(stack, "POST", f"/api/ml/{ml['id']}/interactive-annotating",
                  json={"task": task["id"], "context": {"result": [click]}})
    assert "errors" not in answer, answer
    items = answer["data"]["result"]
    (brush,) = [i for i in items if i["type"] == "brushlabels"]
    (text,) = [i for i in items if i["type"] == "textarea"]
    assert brush["id"] == text["id"] and text["value"]["text"][0]
    mask = decode_rle(brush["value"]["rle"]).reshape(160, 160, 4)[:, :, 3] > 0
    assert mask[y, x]
