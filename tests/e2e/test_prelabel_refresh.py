"""A correction in a real Label Studio 1.23.2 keeps every prediction current, and
``tag-backend prelabel --refresh`` gives a new prediction to exactly the tasks the correction
changed (slow; CI runs it).

The project: one scene, three near-identical copies of it (pixel noise), the scene with a much
darker disc and five clearly different images, pre-labelled with ``tag-backend prelabel``. An annotator renames the scene's
disc region through Label Studio's API and accepts one near-identical copy unchanged; Label
Studio sends both annotations to the backend's webhook.

* The correction is learnt live, not released: the backend's ``model_version`` is unchanged,
  every stored prediction still has it, and a second plain ``prelabel`` queues nothing.
* Brute force: every unlabeled task is re-predicted in this process with the library predictor
  and serializer (the knowledge now in the store, not the refresh planner) and compared with
  its stored prediction. A prediction **changed** when the regions Label Studio shows differ:
  the set of (name, mask) pairs, masks compared pixel for pixel (docs/learning.md, "Targeted
  re-prediction"). Before the correction the brute force reproduces every stored prediction
  exactly, so a difference afterwards is the correction's doing, not noise.
* ``prelabel --refresh`` then gives a new prediction to exactly the changed tasks, equal to the
  brute force's, and none to the others: the planner's candidates are the unlabeled tasks with a
  region predicted as the corrected concept (here also the darker disc, which the correction's
  exemplar does not reach); a recomputed prediction equal to the stored one is not pushed
  again.
"""
from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle
from PIL import Image

from ls_server import (backend_metric, data_dir_copy, ls_api, prelabel_process, start_backend,
                       stop, wait_until)

pytestmark = pytest.mark.slow
SIZE = 64
NEW_NAME = "zorblax widget"


def _scenes() -> dict[str, tuple[Image.Image, np.ndarray | None]]:
    """Scene name -> (image, ground-truth ids of the corrected scene, else None)."""
    from scenes import flat_shapes

    scene, gt = flat_shapes(SIZE, seed=0)
    pixels = np.asarray(scene).astype(np.int16)
    out: dict[str, tuple[Image.Image, np.ndarray | None]] = {"scene": (scene, gt)}
    for k in range(3):
        noisy = pixels + np.random.default_rng(k + 1).integers(-2, 3, pixels.shape)
        out[f"near{k}"] = (Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), None)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    black, white = np.array([10, 10, 10]), np.array([250, 250, 250])
    out["stripes"] = (np.where(((xx // 8) % 2)[..., None] == 1, white, black), None)
    out["checker"] = (np.where((((xx // 16) + (yy // 16)) % 2)[..., None] == 1,
                               np.array([200, 30, 30]), np.array([30, 30, 200])), None)
    out["gradient"] = (np.stack([xx * 4, yy * 4, 255 - xx * 2], -1), None)
    out["noise"] = (np.random.default_rng(7).integers(0, 256, (SIZE, SIZE, 3)), None)
    out["other_colours"] = (flat_shapes(SIZE, seed=1)[0], None)
    # the same scene with a much darker disc: still predicted as the disc's concept, but too
    # far from the corrected disc for its exemplar to rename it
    darker = np.asarray(scene).copy()
    darker[gt == 2] = np.clip(darker[gt == 2].astype(np.int16) - 90, 0, 255)
    out["darker_disc"] = (darker, None)
    return {name: (image if isinstance(image, Image.Image)
                   else Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)), gt)
            for name, (image, gt) in out.items()}


def _shown(result: list[dict]) -> frozenset[tuple[str, str]]:
    """What Label Studio shows of a prediction: its (name, mask digest) pairs."""
    masks, names = {}, {}
    for item in result:
        if item["type"] == "brushlabels":
            h, w = item["original_height"], item["original_width"]
            masks[item["id"]] = decode_rle(item["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0
        elif item["type"] == "textarea":
            names[item["id"]] = item["value"]["text"][0]
    assert set(masks) == set(names), "every region has a mask and a name"
    return frozenset((names[i], _digest(masks[i])) for i in masks)


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes()).hexdigest()


class BruteForce:
    """Re-predicts images in this process with the library predictor and serializer, on the
    knowledge in the shared store (not through ``/predict``, which would record the predictions,
    nor the refresh planner)."""

    def __init__(self, env: dict[str, str], label_config: str) -> None:
        import os

        from tag_backend.config import settings_from_env
        from tag_backend.ls.controls import parse_label_config
        from tag_backend.services import Services

        self.services = Services(settings_from_env({**os.environ, **env}))
        self.layout = parse_label_config(label_config)

    def shown(self, image: Image.Image) -> frozenset[tuple[str, str]]:
        self.services.refresh()  # the knowledge the store holds now
        services = self.services
        regions = services.tasks.regions([image], services.knowledge())[0]
        item = services.tasks.item(image, regions, self.layout, services.model_version())
        return _shown(item["result"])


def _predictions(ls: str, task: int) -> list[dict]:
    return sorted(ls_api(ls, "GET", f"/api/predictions/?task={task}"), key=lambda p: p["id"])


def _run(env, project, *args) -> str:
    proc = prelabel_process(env, project, *args)
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out
    return out


def _queued_by_job(data: str, job_id: int) -> set[int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{data}/concepts.db")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT ls_task_id FROM prelabel_tasks WHERE job_id = :j"),
                                {"j": job_id}).all()
    finally:
        engine.dispose()
    return {int(r[0]) for r in rows}


def _learnt(backend: str, count: int) -> bool:
    """Whether the backend's correction worker has processed ``count`` annotations."""
    failed = sum(backend_metric(backend, "tag_corrections_ingested_total", outcome=o)
                 for o in ("retry", "failed"))
    assert not failed, "the backend could not learn an annotation (see its log)"
    return backend_metric(backend, "tag_corrections_ingested_total") >= count


def test_refresh_repredicts_exactly_the_tasks_a_correction_changed(ls_stack):
    ls = ls_stack["ls"]
    data = data_dir_copy(ls_stack, "learning-data")
    env = {**ls_stack["env"], "TAG_DATA_DIR": data}
    scenes = _scenes()
    project = ls_api(ls, "POST", "/api/projects",
                     json={"title": "learning refresh", "label_config": ls_stack["config"]})["id"]
    folder = Path(data).parent / f"learning-images-{project}"
    folder.mkdir()
    files = []
    for name, (image, _) in scenes.items():
        image.save(folder / f"{name}.png")
        files.append((name, (f"{name}.png", (folder / f"{name}.png").read_bytes(), "image/png")))
    ls_api(ls, "POST", f"/api/projects/{project}/import", files=files)
    tasks = ls_api(ls, "GET", f"/api/tasks?project={project}&page_size=100")["tasks"]
    scene_of = {t["id"]: next(n for n in scenes if t["data"]["image"].endswith(f"-{n}.png")
                              or t["data"]["image"].endswith(f"/{n}.png")) for t in tasks}
    task_of = {name: task for task, name in scene_of.items()}
    assert sorted(scene_of.values()) == sorted(scenes)

    logs = Path(data).parent / "learning-backend"
    logs.mkdir()
    be_proc, backend = start_backend(logs, env)
    brute = None
    try:
        ls_api(ls, "POST", "/api/ml", json={"url": backend, "project": project, "title": "tag"})
        version = requests.post(backend + "/setup", json={"project": f"{project}.1",
                                                          "schema": ls_stack["config"]}).json()
        version = version["model_version"]
        _run(env, project)
        before = {task: _predictions(ls, task) for task in scene_of}
        assert all(len(p) == 1 and p[0]["model_version"] == version for p in before.values())
        stored = {task: _shown(p[0]["result"]) for task, p in before.items()}

        brute = BruteForce(env, ls_stack["config"])
        for task, name in scene_of.items():  # the comparison is exact: no difference yet
            assert brute.shown(scenes[name][0]) == stored[task], f"{name} is not reproduced"

        # the annotator accepts one near copy unchanged and renames the scene's disc
        accepted = before[task_of["near2"]][0]
        ls_api(ls, "POST", f"/api/tasks/{task_of['near2']}/annotations",
               json={"result": accepted["result"], "parent_prediction": accepted["id"],
                     "lead_time": 2})
        prediction = before[task_of["scene"]][0]
        disc = scenes["scene"][1] == 2
        regions = {i["id"]: decode_rle(i["value"]["rle"]).reshape(SIZE, SIZE, 4)[:, :, 3] > 0
                   for i in prediction["result"] if i["type"] == "brushlabels"}
        target = max(regions, key=lambda r: (regions[r] & disc).sum() / (regions[r] | disc).sum())
        result = copy.deepcopy(prediction["result"])
        renamed = [i for i in result if i["id"] == target and i["type"] == "textarea"]
        corrected_name = renamed[0]["value"]["text"][0]
        renamed[0]["value"]["text"] = [NEW_NAME]
        ls_api(ls, "POST", f"/api/tasks/{task_of['scene']}/annotations",
               json={"result": result, "parent_prediction": prediction["id"], "lead_time": 3})
        wait_until(lambda: _learnt(backend, 2), 600, "both annotations learnt", interval=1)

        # learnt live, not released: every prediction made before is still the current version
        after = requests.post(backend + "/setup", json={"project": f"{project}.1",
                                                        "schema": ls_stack["config"]}).json()
        assert after["model_version"] == version, "a correction changed model_version"
        assert all(p["model_version"] == version
                   for task in scene_of for p in _predictions(ls, task))
        assert "nothing to do" in _run(env, project)  # a plain prelabel queues nothing

        labeled = {task_of["scene"], task_of["near2"]}
        now = {task: brute.shown(scenes[name][0]) for task, name in scene_of.items()
               if task not in labeled}
        changed = {task for task, shown in now.items() if shown != stored[task]}
        names = {scene_of[t] for t in changed}
        # non-trivial: the near copies are renamed, the clearly different images are not
        assert names == {"near0", "near1"}, names
        assert all(any(n == NEW_NAME for n, _ in now[t]) for t in changed)
        candidates = {t for t in now if any(n == corrected_name for n, _ in stored[t])}
        assert {scene_of[t] for t in candidates - changed} == {"darker_disc"}

        out = _run(env, project, "--refresh")
        job_id = int(re.search(r"^job (\d+): ", out, re.MULTILINE).group(1))
        assert _queued_by_job(data, job_id) == candidates, out
        assert f"{len(changed)} pushed, {len(candidates - changed)} unchanged" in out, out
        refreshed = {}
        for task in scene_of:
            predictions = _predictions(ls, task)
            assert all(p["model_version"] == version for p in predictions)
            if len(predictions) > 1:
                refreshed[task] = predictions[1:]
        assert set(refreshed) == changed, ({scene_of[t] for t in refreshed}, names)
        for task, new in refreshed.items():
            assert len(new) == 1 and _shown(new[0]["result"]) == now[task]
    finally:
        if brute is not None:
            brute.services.close()
        stop(be_proc)
