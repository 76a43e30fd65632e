"""Masks as polygons and boxes, for projects that label with ``PolygonLabels`` / ``RectangleLabels``.

Pure geometry on boolean (H, W) masks, in pixel coordinates of the original image (a pixel
``(row, col)`` covers ``[col, col + 1] x [row, row + 1]``). Each connected component of a region
is one shape: a Label Studio polygon or rectangle is a single outline, and teams exporting to
YOLO or COCO want one instance per object.

Polygons: OpenCV traces the outline and its holes (``findContours`` with a two-level
hierarchy) and simplifies them with Douglas-Peucker (``approxPolyDP``) so no point of the
outline moves by more than ``tolerance`` pixels. Label Studio polygons cannot have holes, so
each hole is joined to the outline by a zero-width cut between their closest vertices and
traversed in the opposite direction: filled with either the non-zero or the even-odd rule
(browsers, OpenCV, pycocotools) the hole stays empty.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: left, top, width, height."""

    x: float
    y: float
    width: float
    height: float


def connected_components(mask: np.ndarray, min_pixels: int = 1) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of ``mask`` with at least ``min_pixels`` pixels."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return [labels == i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_pixels]


def _signed_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _simplify(contour: np.ndarray, tolerance: float) -> np.ndarray:
    points = cv2.approxPolyDP(contour, float(tolerance), True) if tolerance > 0 else contour
    return points.reshape(-1, 2).astype(np.float64)


def _splice_hole(outline: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One ring: the outline, a cut to the hole's nearest vertex, the hole, and back."""
    if (_signed_area(outline) > 0) == (_signed_area(hole) > 0):
        hole = hole[::-1]
    distances = ((outline[:, None, :] - hole[None, :, :]) ** 2).sum(axis=2)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    loop = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outline[: i + 1], loop, outline[i:]])


def mask_polygons(mask: np.ndarray, tolerance: float = 1.5, min_pixels: int = 1) -> list[np.ndarray]:
    """Simplified outlines of a mask, one ``(N, 2)`` array of (x, y) pixel coordinates per component.

    ``tolerance``: the most any simplified point strays from the traced outline, in pixels
    (0 keeps every corner). Components smaller than ``min_pixels`` are skipped; holes are
    spliced in (see the module docstring) and holes that simplify to fewer than 3 points dropped.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    polygons = []
    for component in connected_components(mask, min_pixels):
        contours, hierarchy = cv2.findContours(component.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        if hierarchy is None:
            continue
        links = hierarchy[0]
        for index, (_, _, first_child, parent) in enumerate(links):
            if parent != -1:
                continue
            outline = _simplify(contours[index], tolerance)
            if len(outline) < 3:  # a one-pixel-wide sliver: keep its traced points
                outline = contours[index].reshape(-1, 2).astype(np.float64)
            child = first_child
            while child != -1:
                hole = _simplify(contours[child], tolerance)
                if len(hole) >= 3:
                    outline = _splice_hole(outline, hole)
                child = links[child][0]
            # Contour points are boundary pixels: their centres lie half a pixel inside the edge.
            polygons.append(outline + 0.5)
    return polygons


def mask_boxes(mask: np.ndarray, min_pixels: int = 1) -> list[Box]:
    """The bounding box of each connected component of a mask, in pixels."""
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    boxes = []
    for component in connected_components(mask, min_pixels):
        rows = np.flatnonzero(component.any(axis=1))
        cols = np.flatnonzero(component.any(axis=0))
        boxes.append(Box(float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)))
    return boxes


def polygon_to_mask(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon of (x, y) pixel coordinates (pixel centres inside are filled)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    # Shift by the pixel-centre offset and round to OpenCV's fixed point (8 fractional bits).
    scaled = np.round((np.asarray(points, dtype=np.float64) - 0.5) * 256).astype(np.int32)
    cv2.fillPoly(canvas, [scaled.reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=8)
    return canvas.astype(bool)
