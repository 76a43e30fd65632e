"""Interactive prompts: Label Studio context parsing and mask selection from TAG segments."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tag_backend.ls.interactive import InteractiveRequestError, parse_context
from tag_backend.ls.rle import mask_to_rle
from tag_backend.stages.prompted import FeatureSplitter, Prompts, sam_prompt, select_segments

H, W = 80, 120


def keypoint(x_pct, y_pct, positive=True, label="object", to_name="image"):
    """A keypoint region exactly as Label Studio 1.23 sends it in params.context.result."""
    return {"original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x_pct, "y": y_pct, "width": 0.6, "keypointlabels": [label]},
            "is_positive": positive, "id": "Tx1GGc2Bpb", "from_name": "kp", "to_name": to_name,
            "type": "keypointlabels", "origin": "manual"}


def rectangle(x, y, w, h, rotation=0):
    return {"original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                      "rectanglelabels": ["object"]},
            "id": "r1", "from_name": "box", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual"}


def test_parse_keypoints_rectangles_and_strokes():
    stroke = np.zeros((H, W), bool)
    stroke[10:14, 20:60] = True
    brush = {"original_width": W, "original_height": H, "value": {
        "format": "rle", "rle": mask_to_rle(stroke), "brushlabels": ["object"]},
        "type": "brushlabels", "to_name": "image", "from_name": "tag"}
    ctx = {"annotation_id": None, "draft_id": 0, "user_id": 1, "result": [
        keypoint(25, 50, label="car"), keypoint(75, 50, positive=False), rectangle(10, 10, 50, 50),
        brush, keypoint(5, 5, to_name="other"), {"type": "textarea", "value": {"text": ["x"]}}]}
    parsed = parse_context(ctx, "image", (H, W))
    assert parsed.label == "car"
    assert parsed.prompts.positives == [(30.0, 40.0)] and parsed.prompts.negatives == [(90.0, 40.0)]
    assert parsed.prompts.boxes == [(12.0, 8.0, 72.0, 48.0)]
    assert (parsed.prompts.strokes == stroke).all()
    # A box rotated by 90 degrees about its top-left corner.
    (box,) = parse_context({"result": [rectangle(50, 10, 10, 20, rotation=90)]}, "image", (H, W)).prompts.boxes
    assert np.allclose(box, (60 - 16, 8, 60, 8 + 12))
    assert parse_context({"result": None}, "image", (H, W)).prompts.empty


@pytest.mark.parametrize("bad, reason", [
    ({"result": "x"}, "list"),
    ({"result": [{**keypoint(10, 10), "value": "x"}]}, "object"),
    ({"result": [{**keypoint(10, 10), "value": {"x": "a", "y": 1}}]}, "number"),
    ({"result": [keypoint(150, 10)]}, "outside"),
    ({"result": [rectangle(10, 10, 0, 10)]}, "positive"),
    ({"result": [{"type": "brushlabels", "to_name": "image", "value": {"rle": [1, 2, 3]}}]}, "RLE"),
])
def test_malformed_context_is_refused_with_the_reason(bad, reason):
    with pytest.raises(InteractiveRequestError, match=reason):
        parse_context(bad, "image", (H, W))


def two_segments():
    labels = np.zeros((H, W), np.int64)
    labels[:, 60:] = 1
    return labels


def test_clicks_and_boxes_select_segments():
    labels = two_segments()
    mask = select_segments(labels, Prompts(positives=[(10, 10)]), None)
    assert (mask == (labels == 0)).all()
    both = select_segments(labels, Prompts(positives=[(10, 10), (100, 10)]), None)
    assert both.all()
    # A box around most of segment 1 selects it, clipped to the box.
    boxed = select_segments(labels, Prompts(boxes=[(55, 0, 120, 70)]), None)
    assert boxed[:70, 60:].all() and not boxed[70:].any() and not boxed[:, :60].any()


def test_negative_click_splits_the_segment_by_its_features():
    labels = np.zeros((H, W), np.int64)
    # Patch grid 8x12 (10 px patches); the segment's tokens differ between its left and right half.
    grid = (8, 12)
    tokens = torch.zeros(96, 4)
    cols = torch.arange(96) % 12
    tokens[cols < 6, 0] = 1.0
    tokens[cols >= 6, 1] = 1.0
    splitter = FeatureSplitter(tokens, grid)
    mask = select_segments(labels, Prompts(positives=[(15, 40)], negatives=[(105, 40)]), splitter)
    assert mask[:, :55].all() and not mask[:, 65:].any()
    assert mask[40, 15] and not mask[40, 105]
    # Without features the segment is cut between the clicks.
    cut = select_segments(labels, Prompts(positives=[(15, 40)], negatives=[(105, 40)]), None)
    assert cut[40, 15] and not cut[40, 105] and cut[:, :59].all() and not cut[:, 61:].any()


def test_sam_prompt_from_a_group():
    prompt, multi = sam_prompt(Prompts(positives=[(5, 6)]))
    assert multi and prompt.points == [(5, 6)] and prompt.labels == [1] and prompt.box is None
    prompt, multi = sam_prompt(Prompts(positives=[(5, 6)], negatives=[(9, 9)], boxes=[(0, 0, 20, 20)]))
    assert not multi and prompt.labels == [1, 0] and prompt.box == (0, 0, 20, 20)
    groups = Prompts(boxes=[(0, 0, 5, 5), (6, 6, 9, 9)]).groups()
    assert [g.boxes for g in groups] == [[(0, 0, 5, 5)], [(6, 6, 9, 9)]]
