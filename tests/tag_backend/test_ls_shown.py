"""What an annotator sees of a prediction: the comparison a refresh uses to skip copies."""
from __future__ import annotations

from tag_backend.ls.shown import same_regions


def _region(rid: str, rle: list[int], name: str, score: float = 0.5) -> list[dict]:
    common = {"id": rid, "to_name": "image", "original_width": 4, "original_height": 4,
              "score": score}
    return [{**common, "from_name": "tag", "type": "brushlabels",
             "value": {"format": "rle", "rle": rle, "brushlabels": ["object"]}},
            {**common, "from_name": "name", "type": "textarea", "value": {"text": [name]}}]


def test_region_ids_order_scores_and_extra_keys_do_not_count():
    shown = _region("a1", [1, 2], "dog") + _region("b2", [3, 4], "cat")
    again = _region("x9", [3, 4], "cat", 0.9) + _region("y8", [1, 2], "dog", 0.1)
    again[0]["origin"] = "prediction"  # bookkeeping a store may add
    assert same_regions(shown, again)


def test_a_name_moved_to_another_mask_a_new_name_or_mask_counts():
    shown = _region("a1", [1, 2], "dog") + _region("b2", [3, 4], "cat")
    assert not same_regions(shown, _region("a1", [1, 2], "cat") + _region("b2", [3, 4], "dog"))
    assert not same_regions(shown, _region("a1", [1, 2], "wolf") + _region("b2", [3, 4], "cat"))
    assert not same_regions(shown, _region("a1", [1, 5], "dog") + _region("b2", [3, 4], "cat"))
    assert not same_regions(shown, _region("a1", [1, 2], "dog"))
