"""Interactive /predict: the exact context payloads Label Studio 1.23 sends for smart tools."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tag_backend.app import create_app
from tag_backend.ls import interactive_label_config
from tag_backend.ls.rle import mask_to_rle

from ls_helpers import shared_services

SIZE = 128
CONFIG = interactive_label_config()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from scenes import flat_shapes

    root = tmp_path_factory.mktemp("interactive-imgs")
    image, gt = flat_shapes(SIZE, seed=3)
    image.save(root / "scene.png")
    return root, gt


def keypoint(x, y, positive=True, label="object"):
    """A KeyPointLabels smart-tool region as Label Studio sends it (pixels -> percent)."""
    return {"original_width": SIZE, "original_height": SIZE, "image_rotation": 0,
            "value": {"x": 100 * x / SIZE, "y": 100 * y / SIZE, "width": 0.55,
                      "keypointlabels": [label]},
            "is_positive": positive, "id": f"kp{x}{y}", "from_name": "click", "to_name": "image",
            "type": "keypointlabels", "origin": "manual"}


def rectangle(x0, y0, x1, y1):
    return {"original_width": SIZE, "original_height": SIZE, "image_rotation": 0,
            "value": {"x": 100 * x0 / SIZE, "y": 100 * y0 / SIZE, "width": 100 * (x1 - x0) / SIZE,
                      "height": 100 * (y1 - y0) / SIZE, "rotation": 0, "rectanglelabels": ["object"]},
            "id": "rect1", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual"}


def body(path, regions):
    """The /predict body of an interactive call (LS ml/api_connector.py::make_predictions)."""
    task = {"id": 7, "data": {"image": str(path)}, "annotations": [], "predictions": [], "drafts": []}
    return {"tasks": [task], "project": "3.1700000000", "label_config": CONFIG,
            "params": {"login": None, "password": None,
                       "context": {"annotation_id": None, "draft_id": 0, "user_id": 1,
                                   "result": regions}}}


def masks_of(item):
    out = []
    for region in item["result"]:
        if region["type"] == "brushlabels":
            h, w = region["original_height"], region["original_width"]
            out.append(decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0)
    return out


@pytest.fixture(scope="module")
def services(tiny_services_session, tmp_path_factory, scene):
    root, _ = scene
    return shared_services(tiny_services_session, tmp_path_factory.mktemp("srv"),
                           allowed_local_roots=str(root))


@pytest.fixture()
def client(services):
    return create_app(services=services, start_worker=False).test_client()


def test_keypoint_returns_only_the_region_under_the_click(client, services, scene):
    root, _ = scene
    r = client.post("/predict", json=body(root / "scene.png", [keypoint(64, 92)]))
    assert r.status_code == 200, r.json
    (item,) = r.json["results"]
    (mask,) = masks_of(item)
    assert mask[92, 64]
    brush, text = item["result"]
    assert brush["id"] == text["id"] and brush["value"]["brushlabels"] == ["object"]
    assert brush["from_name"] == "tag" and brush["to_name"] == "image"
    assert text["type"] == "textarea" and text["value"]["text"][0]
    assert 0 < brush["score"] <= 1 and item["model_version"] == r.json["model_version"]
    # The second click on the same image is answered from the kept segments and features.
    hits = services.predictor.cache.hits
    r = client.post("/predict", json=body(root / "scene.png", [keypoint(20, 20)]))
    (mask,) = masks_of(r.json["results"][0])
    assert mask[20, 20] and len(services.interactive.segments) == 1
    assert services.predictor.cache.hits == hits + 1


def test_negative_keypoint_is_excluded(client, scene):
    root, _ = scene
    # Both clicks on the grey background (one TAG segment or several): the negative one splits.
    r = client.post("/predict", json=body(root / "scene.png",
                                          [keypoint(6, 120), keypoint(122, 120, positive=False)]))
    (mask,) = masks_of(r.json["results"][0])
    assert mask[120, 6] and not mask[120, 122]


def test_rectangle_selects_inside_the_box(client, scene):
    root, _ = scene
    r = client.post("/predict", json=body(root / "scene.png", [rectangle(30, 60, 100, 125)]))
    (mask,) = masks_of(r.json["results"][0])
    assert mask.any()
    outside = np.ones_like(mask)
    outside[59:126, 29:101] = False  # one pixel of slack for mask smoothing
    assert not (mask & outside).any()


def test_brush_stroke_and_bad_prompts(client, scene):
    root, _ = scene
    stroke = np.zeros((SIZE, SIZE), bool)
    stroke[20:24, 15:60] = True
    brush = {"original_width": SIZE, "original_height": SIZE, "type": "brushlabels",
             "from_name": "tag", "to_name": "image",
             "value": {"format": "rle", "rle": mask_to_rle(stroke), "brushlabels": ["object"]}}
    r = client.post("/predict", json=body(root / "scene.png", [brush]))
    (mask,) = masks_of(r.json["results"][0])
    assert mask[stroke].mean() > 0.9
    r = client.post("/predict", json=body(root / "scene.png", [keypoint(500, 3)]))
    assert r.status_code == 400 and "outside the image" in r.json["detail"]
    r = client.post("/predict", json=body(root / "scene.png", []))
    assert r.status_code == 200 and r.json["results"] == [
        {"result": [], "score": 0.0, "model_version": r.json["model_version"]}]
    r = client.post("/predict", json=body(root / "missing.png", [keypoint(3, 3)]))
    assert r.status_code == 200 and r.json["results"][0]["result"] == []


def test_sam_answers_clicks_with_its_own_mask(tiny_services_session, tiny_sam_dir, tmp_path, scene):
    """With TAG_REFINE=sam2 a click is SAM's best mask (the kept SAM image embeddings)."""
    from PIL import Image

    from tag_backend.stages.prompted import Prompts
    from tag_backend.stages.sam_refine import SamPrompt

    root, _ = scene
    services = shared_services(tiny_services_session, tmp_path, refine="sam2", sam_model=tiny_sam_dir,
                               allowed_local_roots=str(root))
    image = Image.open(root / "scene.png").convert("RGB")
    click = Prompts(positives=[(40.0, 90.0)])
    regions = services.interactive.regions(image, click.groups(), services.knowledge())
    refiner = services.models.refiner
    sam = services.predictor.cache.get(services.predictor.feature_key(image)).sam
    low, iou = refiner.decode(sam, [SamPrompt(points=[(40.0, 90.0)], labels=[1])], multimask=True)
    expected = (refiner.upsample(low[0, int(iou[0].argmax())], (SIZE, SIZE)) > 0).numpy()
    assert low.shape[1] == 3  # a lone click asks SAM for three candidates
    if expected.any():
        (region,) = regions
        assert (region.mask == expected).all() and region.name and region.embedding is not None
    else:  # random weights may answer nothing: then nothing is returned
        assert regions == []
