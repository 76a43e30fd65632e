"""Masks -> brush RLE results, config parsing and guided snapping."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from tag_backend.ls.controls import parse_label_config
from tag_backend.ls.errors import LabelConfigError
from tag_backend.ls.layout import DEFAULT_LAYOUT
from tag_backend.ls.serializer import Serializer
from tag_backend.masks import MaskCleaning, clean_mask, clean_regions
from tag_backend.types import SegmentLabel

from ls_helpers import CONFIG


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def test_clean_mask_removes_speckle_and_fills_pinholes():
    rng = np.random.default_rng(0)
    mask = _disc(200, 300, 100, 150, 60)
    noisy = mask ^ (rng.random(mask.shape) < 0.01)
    cleaned = clean_mask(noisy)
    assert (cleaned ^ mask).sum() < 0.01 * mask.sum()
    assert not cleaned[:20, :20].any()


def test_clean_regions_caps_count_keeps_largest_in_order():
    masks = [_disc(100, 100, 50, 50, r) for r in (10, 30, 20)]
    kept = clean_regions(masks, max_regions=2, cleaning=MaskCleaning(min_region=0))
    assert [i for i, _ in kept] == [1, 2]
    assert clean_regions([np.zeros((50, 50), bool)], 5) == []


def test_serialized_task_roundtrip_and_validates_against_config():
    h, w = 120, 160
    regions = [
        SegmentLabel(mask=_disc(h, w, 60, 80, 40), name="golden retriever", score=0.31),
        SegmentLabel(mask=_disc(h, w, 20, 20, 12), name="ball", score=0.2),
    ]
    task = Serializer().task("/data/upload/1/x.png", regions, w, h, DEFAULT_LAYOUT, "v7")
    pred = task["predictions"][0]
    assert task["data"] == {"image": "/data/upload/1/x.png"}
    assert pred["model_version"] == "v7" and 0 < pred["score"] <= 1
    items = pred["result"]
    assert [i["type"] for i in items] == ["brushlabels", "textarea"] * 2
    assert items[0]["id"] == items[1]["id"] != items[2]["id"]
    assert items[1]["value"]["text"] == ["golden retriever"]
    decoded = decode_rle(items[0]["value"]["rle"]).reshape(h, w, 4)[:, :, 3]
    assert set(np.unique(decoded)) == {0, 255}
    assert ((decoded > 0) ^ regions[0].mask).sum() < 0.02 * regions[0].mask.sum()
    li = LabelInterface(CONFIG)
    assert li.validate_prediction({"result": [items[0]]}) is True


def test_parse_config_modes_and_errors():
    open_mode = parse_label_config(CONFIG)
    assert (open_mode.brush_name, open_mode.image_name, open_mode.text_name) == (
        "tag",
        "image",
        "name",
    )
    assert open_mode.guided_labels == ()
    guided = parse_label_config(
        '<View><Image name="img" value="$photo"/><BrushLabels name="b" toName="img">'
        '<Label value="cat"/><Label value="dog"/></BrushLabels></View>'
    )
    assert guided.guided_labels == ("cat", "dog") and guided.image_field == "photo"
    assert guided.text_name is None
    for bad, reason in [
        ("", "empty"),
        ("<View><Text name='t' value='$t'/></View>", "Image"),
        ("<View><Image name='i' value='$i'/></View>", "BrushLabels"),
        ("<View><Image", "XML"),
    ]:
        with pytest.raises(LabelConfigError, match=reason):
            parse_label_config(bad)


def _regions(h=100, w=120):
    return [SegmentLabel(mask=_disc(h, w, 50, 60, 30), name="dog", score=0.5),
            SegmentLabel(mask=_disc(h, w, 15, 15, 8), name="ball", score=0.1),
            SegmentLabel(mask=_disc(h, w, 85, 100, 10), name="cat", score=0.3)]


def test_serializer_label_choice_cap_and_score():
    regions = _regions()
    open_mode = parse_label_config(CONFIG)
    item = Serializer(max_regions=2).item(regions, 120, 100, open_mode, "v1")
    brushes = [i for i in item["result"] if i["type"] == "brushlabels"]
    texts = [i["value"]["text"][0] for i in item["result"] if i["type"] == "textarea"]
    assert len(brushes) == 2 and texts == ["dog", "cat"]  # the two largest, in input order
    assert {b["value"]["brushlabels"][0] for b in brushes} == {"object"}
    assert 0.3 < item["score"] < 0.5 and item["model_version"] == "v1"
    dynamic = parse_label_config('<View><Image name="i" value="$image"/>'
                                 '<BrushLabels name="b" toName="i" value="$labels"/></View>')
    names = Serializer().item(regions, 120, 100, dynamic, "v1")["result"]
    assert [i["value"]["brushlabels"][0] for i in names] == ["dog", "ball", "cat"]
    assert Serializer().item([], 120, 100, open_mode, "v1") == {
        "result": [], "score": 0.0, "model_version": "v1"}


def test_guided_label_choice_is_one_swappable_function():
    guided = parse_label_config(
        '<View><Image name="img" value="$photo"/><BrushLabels name="b" toName="img">'
        '<Label value="animal"/><Label value="toy"/></BrushLabels></View>')
    seen = []

    def choose(regions, layout):
        seen.append(([r.name for r in regions], layout.guided_labels))
        # (label, score in that label): None drops the region / keeps the region's own score.
        return [("toy", 0.9) if r.name == "ball" else (("animal", None) if r.name == "dog" else (None, None))
                for r in regions]

    item = Serializer(guided=choose).item(_regions(), 120, 100, guided, "v2")
    assert seen == [(["dog", "ball", "cat"], ("animal", "toy"))]
    assert [i["value"]["brushlabels"][0] for i in item["result"]] == ["animal", "toy"]  # cat dropped
    assert [i["score"] for i in item["result"]] == [0.5, 0.9]
    assert all(i["from_name"] == "b" and i["to_name"] == "img" for i in item["result"])
    with pytest.raises(ValueError, match="guided"):
        Serializer().item(_regions(), 120, 100, guided, "v2")
    with pytest.raises(ValueError):
        Serializer(max_regions=-1)
