"""`tag-backend export`: Label Studio JSON export -> COCO (checked by pycocotools), PNG masks, classes."""
from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from tag_backend.cli import main
from tag_backend.export.coco import uncompressed_rle
from tag_backend.ls.layout import ResultLayout
from tag_backend.ls.serializer import PlacedRegion, region_items

COCO = pytest.importorskip("pycocotools.coco").COCO
mask_api = pytest.importorskip("pycocotools.mask")

H, W = 80, 100


def _masks() -> dict[str, np.ndarray]:
    dog = np.zeros((H, W), np.uint8)
    cv2.circle(dog, (30, 40), 20, 1, -1)
    cv2.circle(dog, (30, 40), 7, 0, -1)  # a hole
    two_dogs = np.zeros((H, W), np.uint8)
    two_dogs[5:25, 60:95] = 1
    two_dogs[50:75, 70:98] = 1
    cat = np.zeros((H, W), np.uint8)
    cat[60:78, 5:40] = 1
    return {"dog": dog.astype(bool), "puppies": two_dogs.astype(bool), "cat": cat.astype(bool)}


MASKS = _masks()


def _items(layout: ResultLayout, named: dict[str, np.ndarray]) -> list[dict]:
    items = []
    for name, mask in named.items():
        items += region_items(PlacedRegion(mask=mask, name=name, label="object", score=1.0), W, H, layout)
    return items


def _export(tmp_path) -> list[dict]:
    brush = ResultLayout(brush_name="tag", text_name="name")
    polygon = ResultLayout(brush_name=None, polygon_name="outline", text_name="name")
    unnamed = {"id": "x1", "from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": W,
               "original_height": H, "value": {"format": "rle", "rle": [0, 0], "brushlabels": []}}
    tasks = [
        {"id": 11, "data": {"image": "/data/local-files/?d=images/a.png"}, "annotations": [
            {"id": 1, "updated_at": "2026-01-01T00:00:00Z", "was_cancelled": False,
             "result": _items(brush, {"Dog": MASKS["dog"], "puppy": MASKS["puppies"], "cat": MASKS["cat"]}) + [unnamed]},
            {"id": 2, "updated_at": "2026-02-01T00:00:00Z", "was_cancelled": True, "result": []},
        ]},
        {"id": 12, "data": {"image": "/data/upload/3/5f1e-b.png"}, "annotations": [
            {"id": 3, "updated_at": "2026-01-01T00:00:00Z", "was_cancelled": False,
             "result": _items(polygon, {"doggo": MASKS["dog"], "tv": MASKS["cat"]})},
        ]},
        {"id": 13, "data": {"image": "/data/upload/3/c.png"}, "annotations": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


@pytest.fixture()
def concept_db(tmp_path):
    """dog, cat; 'puppy' merged into dog; 'doggo' renamed onto dog (an alias)."""
    from database_tools.curation import merge_concepts, rename_concept
    from database_tools.store import Store
    from store_helpers import add_entries, get_entry

    url = f"sqlite:///{tmp_path / 'concepts.db'}"
    store = Store(url)
    add_entries(store, "concept", ["dog", "cat", "puppy", "doggo"])
    merge_concepts(store, ["puppy"], "dog")
    rename_concept(store, "doggo", "dog")
    dog_id = get_entry(store, "concept", "dog").id
    cat_id = get_entry(store, "concept", "cat").id
    store.close()
    return url, dog_id, cat_id


@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_export_resolves_names_and_writes_valid_coco(tmp_path, concept_db, segmentation):
    url, dog_id, cat_id = concept_db
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["export", str(_export(tmp_path)), "--out", str(out), "--db", url,
                                       "--segmentation", segmentation, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 image(s)" in result.output and "3 categories" in result.output
    assert "no name" in result.output  # the unnamed region is reported, not fatal

    coco = COCO(str(out / "annotations.json"))
    categories = {c["name"]: c for c in coco.loadCats(coco.getCatIds())}
    assert set(categories) == {"dog", "cat", "tv"}
    assert categories["dog"]["concept_id"] == dog_id and categories["cat"]["concept_id"] == cat_id
    assert "concept_id" not in categories["tv"]
    images = {i["id"]: i for i in coco.loadImgs(coco.getImgIds())}
    assert images[11]["file_name"] == "images/a.png" and images[12]["file_name"] == "5f1e-b.png"

    dog = categories["dog"]["id"]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[11], catIds=[dog]))
    assert len(anns) == 3  # "Dog" (1 component) and "puppy" (2 components) are one category
    drawn = np.zeros((H, W), bool)
    for ann in anns:
        drawn |= coco.annToMask(ann).astype(bool)
    expected = MASKS["dog"] | MASKS["puppies"]
    if segmentation == "rle":
        assert np.array_equal(drawn, expected)
    else:
        # every wrong pixel within tolerance (1 px) + 1 px of the outline; the hole stays empty
        padded = np.pad(expected, 1)
        to_outline = np.maximum(ndimage.distance_transform_edt(padded), ndimage.distance_transform_edt(~padded))
        assert to_outline[1:-1, 1:-1][drawn ^ expected].max() <= 2.0 and not drawn[40, 30]
    for ann in anns:
        x, y, w, h = ann["bbox"]
        component = coco.annToMask(ann).astype(bool)
        rows, cols = np.nonzero(component)
        assert abs(x - cols.min()) <= 1 and abs(y - rows.min()) <= 1

    png = np.array(Image.open(out / "masks" / "11.png"))
    assert png.shape == (H, W) and png.dtype == np.uint8
    # the smaller region is drawn over the larger where they touch
    assert (png[MASKS["cat"]] == categories["cat"]["id"]).all() and (png[MASKS["dog"] & ~MASKS["cat"]] == dog).all()
    assert (png[~(MASKS["dog"] | MASKS["puppies"] | MASKS["cat"])] == 0).all()
    lines = (out / "classes.txt").read_text().splitlines()
    assert lines[0] == "background" and all(lines[c["id"]] == name for name, c in categories.items())
    rows = list(csv.DictReader((out / "classes.csv").open()))
    assert {r["name"]: r["concept_id"] for r in rows}["dog"] == str(dog_id)


def test_export_without_a_database_keeps_the_names(tmp_path):
    out = tmp_path / "dataset"
    result = CliRunner().invoke(main, ["export", str(_export(tmp_path)), "--out", str(out),
                                       "--db", f"sqlite:///{tmp_path / 'missing.db'}", "--quiet"])
    assert result.exit_code == 0, result.output
    names = {c["name"] for c in json.loads((out / "annotations.json").read_text())["categories"]}
    assert names == {"dog", "puppy", "cat", "doggo", "tv"}
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("content, message", [("{not json", "not JSON"), ('{"a": 1}', "list of tasks")])
def test_bad_export_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    result = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and message in result.output


def test_uncompressed_rle_matches_pycocotools():
    rng = np.random.default_rng(0)
    for mask in (MASKS["dog"], np.ones((4, 5), bool), np.zeros((3, 3), bool), rng.random((17, 9)) > 0.5):
        rle = mask_api.frPyObjects(uncompressed_rle(mask), *mask.shape)
        assert np.array_equal(mask_api.decode(rle).astype(bool), mask)
