"""Label Studio result items for ``PolygonLabels`` and ``RectangleLabels`` from one region's mask.

Each connected component becomes one item (Label Studio shapes are single outlines); every item
gets its own id, and the caller pairs each id with the region's name item. Coordinates are
percentages of the original image size, as Label Studio stores them.
"""
from __future__ import annotations

import numpy as np

from .shapes import mask_boxes, mask_polygons


def _pct(value: float, size: int) -> float:
    return round(float(value) / size * 100.0, 4)


def polygon_values(mask: np.ndarray, label: str, tolerance: float) -> list[dict]:
    """``value`` objects of ``polygonlabels`` items, one per component of ``mask``."""
    height, width = mask.shape
    values = []
    for points in mask_polygons(mask, tolerance):
        clipped = np.clip(points, 0.0, [width, height])
        values.append({
            "points": [[_pct(x, width), _pct(y, height)] for x, y in clipped],
            "polygonlabels": [label],
            "closed": True,
        })
    return values


def rectangle_values(mask: np.ndarray, label: str) -> list[dict]:
    """``value`` objects of ``rectanglelabels`` items, one per component of ``mask``."""
    height, width = mask.shape
    return [{
        "x": _pct(box.x, width), "y": _pct(box.y, height),
        "width": _pct(box.width, width), "height": _pct(box.height, height),
        "rotation": 0, "rectanglelabels": [label],
    } for box in mask_boxes(mask)]


def control_label(region_label: str, control_labels: tuple[str, ...]) -> str:
    """The label a shape control gives a region: the region's own when the control has it,
    else the control's first label (its single open-vocabulary label), else the region's."""
    if not control_labels or region_label in control_labels:
        return region_label
    return control_labels[0]
