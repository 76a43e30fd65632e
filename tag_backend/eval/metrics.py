"""Segmentation metrics: confusion-matrix mIoU and pixel accuracy, region-name accuracy and
Hungarian-matched mask mIoU (name-free mask quality).

Conventions: ground truth holds dataset class indices or ``IGNORE`` (-1); a prediction is a
region map (region index per pixel, -1 where no region) plus one class per region (a dataset
class index or ``UNMATCHED`` = -1). Pixels of classes a protocol does not score are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from .datasets import IGNORE


@dataclass
class Protocol:
    """name; scored: class indices scored; threshold: mapping cosine needed (None = nearest)."""

    name: str
    scored: list[int]
    threshold: float | None
    description: str = ""


def predicted_classes(region_map: np.ndarray, region_classes: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-pixel predicted class; unmatched names and uncovered pixels become ``n_classes``."""
    lut = np.where(region_classes >= 0, region_classes, n_classes).astype(np.int64)
    lut = np.append(lut, n_classes)  # index -1 (no region) -> "unmatched" column
    return lut[region_map]


@dataclass
class Confusion:
    """(C+1) x (C+1) pixel counts, rows = ground truth, last column = unmatched / no region."""

    n_classes: int
    matrix: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.matrix = np.zeros((self.n_classes + 1, self.n_classes + 1), dtype=np.int64)

    def add(self, gt: np.ndarray, pred: np.ndarray, scored: list[int]) -> np.ndarray:
        """Add one image; returns that image's own matrix (for per-image numbers)."""
        keep = np.isin(gt, scored)
        n = self.n_classes + 1
        counts = np.bincount(gt[keep].astype(np.int64) * n + pred[keep], minlength=n * n)
        image = counts.reshape(n, n)
        self.matrix += image
        return image


def scores(matrix: np.ndarray, scored: list[int]) -> dict:
    """mIoU over scored classes with a defined IoU (present in gt or prediction), pixel accuracy."""
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    per_class: dict[int, float] = {}
    for c in scored:
        denom = tp[c] + fp[c] + fn[c]
        if denom > 0:
            per_class[c] = float(tp[c] / denom)
    total = matrix.sum()
    return {
        "miou": float(np.mean(list(per_class.values()))) if per_class else float("nan"),
        "pixel_accuracy": float(tp[scored].sum() / total) if total else float("nan"),
        "per_class_iou": per_class,
        "pixels": int(total),
    }


def region_majorities(region_map: np.ndarray, gt: np.ndarray, n_regions: int, scored: list[int]
                      ) -> np.ndarray:
    """Majority scored gt class under each region (-1 when it covers no scored pixel)."""
    keep = (region_map >= 0) & np.isin(gt, scored)
    n_cls = int(max(scored)) + 1 if scored else 1
    counts = np.bincount(region_map[keep].astype(np.int64) * n_cls + gt[keep],
                         minlength=n_regions * n_cls).reshape(n_regions, n_cls)
    majority = counts.argmax(1)
    return np.where(counts.sum(1) > 0, majority, -1)


def hungarian_ious(region_map: np.ndarray, gt: np.ndarray, n_regions: int) -> list[float]:
    """Per ground-truth segment (every non-ignored class of the image), the IoU of the region
    matched to it by a one-to-one Hungarian assignment maximising total IoU (0 if unmatched)."""
    valid = gt != IGNORE
    gt_ids = np.unique(gt[valid])
    if gt_ids.size == 0:
        return []
    g = np.searchsorted(gt_ids, gt[valid])
    p = region_map[valid].astype(np.int64)
    r = n_regions + 1  # last column = pixels without a region
    p = np.where(p < 0, n_regions, p)
    inter = np.bincount(g * r + p, minlength=len(gt_ids) * r).reshape(len(gt_ids), r)[:, :n_regions]
    gt_area = np.bincount(g, minlength=len(gt_ids))[:, None]
    pred_area = np.bincount(p, minlength=r)[None, :n_regions]
    union = gt_area + pred_area - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    result = [0.0] * len(gt_ids)
    if n_regions:
        rows, cols = linear_sum_assignment(-iou)
        for i, j in zip(rows, cols):
            result[i] = float(iou[i, j])
    return result


def region_map_from_masks(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) int32 region index (-1 = none); larger regions first, smaller ones on top."""
    region_map = np.full(shape, -1, dtype=np.int32)
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        if masks[i].shape != shape:
            raise ValueError(f"region mask {masks[i].shape} does not match image {shape}")
        region_map[masks[i]] = i
    return region_map
