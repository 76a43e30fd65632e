"""Masks -> polygons / boxes: within tolerance of the mask, holes kept empty, valid Label Studio items."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy import ndimage

from tag_backend.ls.controls import parse_label_config
from tag_backend.ls.serializer import Serializer
from tag_backend.ls.shapes import connected_components, mask_boxes, mask_polygons, polygon_to_mask

pycocotools_mask = pytest.importorskip("pycocotools.mask")


def _masks() -> dict[str, np.ndarray]:
    h, w = 90, 120
    out = {}
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (60, 45), 35, 1, -1)
    ring = disc.copy()
    cv2.circle(ring, (60, 45), 15, 0, -1)
    two_holes = disc.copy()
    two_holes[30:40, 45:55] = 0
    two_holes[50:62, 62:75] = 0
    out["disc"], out["ring"], out["two_holes"] = disc, ring, two_holes
    parts = np.zeros((h, w), np.uint8)
    parts[5:20, 5:30] = 1
    parts[40:88, 80:119] = 1  # touches the border
    parts[60:70, 10:60] = 1
    out["parts"] = parts
    ell = np.zeros((h, w), np.uint8)
    ell[10:80, 10:25] = 1
    ell[65:80, 10:100] = 1
    out["ell"] = ell
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.random((h, w)), 4) > 0.52
    out["blobs"] = blobs.astype(np.uint8)
    return {k: v.astype(bool) for k, v in out.items()}


MASKS = _masks()


def _max_error_distance(mask: np.ndarray, drawn: np.ndarray) -> float:
    """How far (pixels) the farthest wrongly drawn pixel is from the mask's boundary."""
    wrong = mask ^ drawn
    if not wrong.any():
        return 0.0
    padded = np.pad(mask, 1)  # the image edge is a boundary too
    to_boundary = np.maximum(ndimage.distance_transform_edt(padded), ndimage.distance_transform_edt(~padded))
    return float(to_boundary[1:-1, 1:-1][wrong].max())


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("tolerance", [0.0, 1.0, 2.5])
def test_polygons_stay_within_tolerance_of_the_mask(name, tolerance):
    mask = MASKS[name]
    polygons = mask_polygons(mask, tolerance)
    assert len(polygons) == len(connected_components(mask))
    drawn = np.zeros_like(mask)
    for points in polygons:
        drawn |= polygon_to_mask(points, *mask.shape)
    if tolerance == 0:
        assert np.array_equal(drawn, mask)
    assert _max_error_distance(mask, drawn) <= tolerance + 1.0


@pytest.mark.parametrize("name", ["ring", "two_holes"])
def test_holes_stay_empty_under_cocos_rasteriser(name):
    mask = MASKS[name]
    (points,) = mask_polygons(mask, 1.0)
    rle = pycocotools_mask.frPyObjects([points.ravel().tolist()], *mask.shape)
    drawn = pycocotools_mask.decode(pycocotools_mask.merge(rle)).astype(bool)
    assert not drawn[45, 60] if name == "ring" else not drawn[35, 50]
    assert _max_error_distance(mask, drawn) <= 2.0
    iou = (drawn & mask).sum() / (drawn | mask).sum()
    assert iou > 0.93


def test_simplification_reduces_points_and_keeps_every_component():
    mask = MASKS["blobs"]
    exact = sum(len(p) for p in mask_polygons(mask, 0))
    simple = sum(len(p) for p in mask_polygons(mask, 2.0))
    assert simple < exact / 3


def test_boxes_are_the_component_bounding_boxes():
    boxes = sorted((b.x, b.y, b.width, b.height) for b in mask_boxes(MASKS["parts"]))
    assert boxes == sorted([(5, 5, 25, 15), (80, 40, 39, 48), (10, 60, 50, 10)])


def test_bad_inputs():
    with pytest.raises(ValueError, match="2-D"):
        mask_polygons(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="tolerance"):
        mask_polygons(MASKS["disc"], -1)
    assert mask_polygons(np.zeros((5, 5), bool)) == [] and mask_boxes(np.zeros((5, 5), bool)) == []


CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="outline" toName="image"><Label value="object"/></PolygonLabels>
  <RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels>
  <TextArea name="name" toName="image" perRegion="true" editable="true" displayMode="region-list"/>
</View>"""


def _prediction(config: str, tolerance: float = 1.0) -> tuple[dict, dict]:
    from tag_backend.types import SegmentLabel

    layout = parse_label_config(config)
    regions = {"doughnut": MASKS["ring"], "blocks": MASKS["parts"]}
    segments = [SegmentLabel(mask=m, name=n, score=0.8) for n, m in regions.items()]
    height, width = MASKS["ring"].shape
    serializer = Serializer(polygon_tolerance=tolerance)
    cleaned = {p.name: p.mask for p in serializer.place(segments, layout)}  # the masks the shapes trace
    return serializer.item(segments, width, height, layout, "v1"), cleaned


def test_polygon_and_box_items_are_valid_for_label_studio():
    from label_studio_sdk.label_interface import LabelInterface

    item, _ = _prediction(CONFIG)
    types = [i["type"] for i in item["result"]]
    # ring: 1 component, parts: 3 -> 4 polygons + 4 boxes, each with its name item
    assert types.count("polygonlabels") == 4 and types.count("rectanglelabels") == 4 and types.count("textarea") == 8
    ids = [i["id"] for i in item["result"] if i["type"] != "textarea"]
    assert len(set(ids)) == len(ids)
    names = {i["id"]: i["value"]["text"][0] for i in item["result"] if i["type"] == "textarea"}
    assert set(names) == set(ids) and set(names.values()) == {"doughnut", "blocks"}
    assert LabelInterface(CONFIG).validate_prediction(item), LabelInterface(CONFIG).validate_prediction(
        item, return_errors=True)


def test_polygons_round_trip_through_the_sdk_coco_converter(tmp_path):
    """Our polygon items, exported as Label Studio would, read back by the SDK's COCO converter."""
    from label_studio_sdk.converter import Converter
    from PIL import Image

    config = CONFIG.replace('<RectangleLabels name="box" toName="image"><Label value="object"/></RectangleLabels>', "")
    item, regions = _prediction(config, tolerance=1.0)
    height, width = MASKS["ring"].shape
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "scene.png")
    export = [{"id": 1, "data": {"image": str(tmp_path / "scene.png")},
               "annotations": [{"id": 1, "result": item["result"], "was_cancelled": False}]}]
    (tmp_path / "export.json").write_text(json.dumps(export))
    Converter(config, str(tmp_path)).convert_to_coco(str(tmp_path / "export.json"), str(tmp_path / "coco"), is_dir=False)
    coco = json.loads((tmp_path / "coco" / "result.json").read_text())
    assert len(coco["annotations"]) == 4
    union = np.zeros((height, width), bool)
    for annotation in coco["annotations"]:
        rle = pycocotools_mask.frPyObjects(annotation["segmentation"], height, width)
        union |= pycocotools_mask.decode(pycocotools_mask.merge(rle)).astype(bool)
    expected = regions["doughnut"] | regions["blocks"]
    # tolerance + 1 px, + half a pixel: pycocotools fills polygons through boundary-pixel centres
    # half a pixel inside
    assert _max_error_distance(expected, union) <= 2.5
    assert not union[45, 60]  # the doughnut's hole
