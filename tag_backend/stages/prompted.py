"""Masks for interactive prompts (clicks, boxes, brush strokes) from TAG's own segments.

Without SAM, a prompt selects among the segments TAG already found for the image:

* positive points and brush strokes select the segments they fall in (a stroke selects every
  segment holding at least :data:`STROKE_SHARE` of it);
* a box alone selects the segments mostly inside it (at least half of their area; if none, the
  one with most pixels in it), and any selection is clipped to the box;
* a negative point inside a selected segment asks for a **finer granularity**: the segment is
  split by k-means on its own cached DINOv2 patch tokens (k = 2, 3, ... up to
  :attr:`FeatureSplitter.max_k`, until positives and negatives fall in different parts), and
  only the parts holding positives (or, with no positive, the parts without negatives) stay.
  If no k separates them, the segment is cut between them (pixels nearer a positive point).

With SAM (tag_backend.stages.sam_refine) the same prompts go to SAM's decoder instead
(:func:`sam_prompt`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .kmeans import kmeans
from .pooling import mask_weights
from .sam_refine import Box, SamPrompt, interior_points
from .segments import grid_scores

logger = logging.getLogger(__name__)

#: Share of a brush stroke a segment must hold to be selected by it.
STROKE_SHARE = 0.25


@dataclass
class Prompts:
    """One interactive selection, in original-image pixel coordinates.

    positives / negatives: (x, y) points; boxes: (x0, y0, x1, y1); strokes: (H, W) bool union
    of the brush strokes (None: no stroke).
    """

    positives: list[tuple[float, float]] = field(default_factory=list)
    negatives: list[tuple[float, float]] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    strokes: np.ndarray | None = None

    @property
    def empty(self) -> bool:
        return not (self.positives or self.negatives or self.boxes or self.strokes is not None)

    def groups(self) -> list["Prompts"]:
        """One object per group: points and strokes make one object (with the box if there is
        exactly one); boxes alone make one object each."""
        if self.positives or self.strokes is not None:
            boxes = self.boxes if len(self.boxes) == 1 else []
            return [Prompts(self.positives, self.negatives, boxes, self.strokes)]
        if self.boxes:
            return [Prompts([], self.negatives, [box], None) for box in self.boxes]
        return []


def _pixel(point: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    x, y = point
    return min(max(int(y), 0), size[0] - 1), min(max(int(x), 0), size[1] - 1)


def box_mask(box: Box, size: tuple[int, int]) -> np.ndarray:
    H, W = size
    x0, y0, x1, y1 = box
    out = np.zeros((H, W), bool)
    out[max(0, int(np.floor(y0))):min(H, int(np.ceil(y1))), max(0, int(np.floor(x0))):min(W, int(np.ceil(x1)))] = True
    return out


class FeatureSplitter:
    """Splits one segment into finer parts by k-means on its cached DINOv2 patch tokens.

    tokens: (gh * gw, D) patch tokens; grid: (gh, gw).
    """

    def __init__(self, tokens: torch.Tensor, grid: tuple[int, int], *, max_k: int = 5,
                 seed: int = 123, max_side: int = 1024) -> None:
        self.tokens, self.grid, self.max_k, self.seed = tokens.float(), grid, max_k, seed
        self.max_side = max_side

    def split(self, region: np.ndarray, positives: list[tuple[float, float]],
              negatives: list[tuple[float, float]]) -> np.ndarray:
        """The part of ``region`` (H, W bool) holding the positives and none of the negatives."""
        size = region.shape
        coverage = mask_weights([region], self.grid)[0]
        inside = coverage >= 0.5
        if int(inside.sum()) < 2:
            inside = coverage > 0
        pos = [_pixel(p, size) for p in positives if region[_pixel(p, size)]]
        neg = [_pixel(p, size) for p in negatives if region[_pixel(p, size)]]
        if not neg:
            return region
        for k in range(2, self.max_k + 1):
            if k > int(inside.sum()):
                break
            centers = kmeans(self.tokens[inside.to(self.tokens.device)], k, n_init=3,
                             seed=self.seed).centers
            assign = self._assign(centers, region)
            pos_c, neg_c = {int(assign[p]) for p in pos}, {int(assign[p]) for p in neg}
            if not pos_c & neg_c:
                keep = pos_c if pos else set(range(k)) - neg_c
                return region & np.isin(assign, sorted(keep))
        # (Without positives k = 2 always separates, so positives exist here.)
        logger.debug("no k <= %d separates the clicks: cutting between them", self.max_k)
        return region & _nearer_to(pos, neg, size)

    def _assign(self, centers: torch.Tensor, region: np.ndarray) -> np.ndarray:
        """(H, W) nearest-centre part of every pixel (bilinear patch scores, like TAG's own
        assignment), computed at most ``max_side`` pixels on the long side."""
        H, W = region.shape
        scale = min(1.0, self.max_side / max(H, W))
        work = (max(1, round(H * scale)), max(1, round(W * scale)))
        scores = grid_scores(self.tokens, self.grid, centers, "nearest")
        up = F.interpolate(scores[None], size=work, mode="bilinear", align_corners=False)[0]
        assign = up.argmax(0).numpy().astype(np.int32)
        if work != (H, W):
            assign = cv2.resize(assign, (W, H), interpolation=cv2.INTER_NEAREST)
        return assign


def _nearer_to(points: list[tuple[int, int]], others: list[tuple[int, int]],
               size: tuple[int, int]) -> np.ndarray:
    """(H, W) pixels nearer to one of ``points`` (row, col) than to any of ``others``."""
    H, W = size
    yy, xx = np.ogrid[:H, :W]

    def nearest(pts):
        d = np.full((H, W), np.inf, np.float32)
        for r, c in pts:
            d = np.minimum(d, ((yy - r) ** 2 + (xx - c) ** 2).astype(np.float32))
        return d

    if not points:
        return np.zeros((H, W), bool)
    return nearest(points) < nearest(others) if others else np.ones((H, W), bool)


def select_segments(labels: np.ndarray, prompts: Prompts, splitter: FeatureSplitter | None
                    ) -> np.ndarray:
    """The (H, W) mask one prompt group selects among the segments of ``labels`` (H, W ids)."""
    size = labels.shape
    chosen = {int(labels[_pixel(p, size)]) for p in prompts.positives}
    if prompts.strokes is not None and prompts.strokes.any():
        ids, counts = np.unique(labels[prompts.strokes], return_counts=True)
        chosen |= {int(i) for i, c in zip(ids, counts) if c >= STROKE_SHARE * counts.sum()}
        chosen.add(int(ids[np.argmax(counts)]))
    clip = box_mask(prompts.boxes[0], size) if prompts.boxes else None
    if clip is not None and not chosen:
        areas = np.bincount(labels.ravel())
        in_box = np.bincount(labels[clip].ravel(), minlength=len(areas))
        chosen = {int(i) for i in np.nonzero(in_box >= 0.5 * np.maximum(areas, 1))[0] if in_box[i]}
        if not chosen and in_box.any():
            chosen = {int(np.argmax(in_box))}
    mask = np.isin(labels, sorted(chosen))
    for seg in sorted(chosen):
        if any(labels[_pixel(p, size)] == seg for p in prompts.negatives):
            region = labels == seg
            part = (splitter.split(region, prompts.positives, prompts.negatives) if splitter is not None
                    else region & _nearer_to([_pixel(p, size) for p in prompts.positives],
                                             [_pixel(p, size) for p in prompts.negatives], size))
            mask = (mask & ~region) | part
    if prompts.strokes is not None:
        mask |= prompts.strokes
    if clip is not None:
        mask &= clip
    return mask


def sam_prompt(prompts: Prompts) -> tuple[SamPrompt, bool]:
    """The SAM prompt of one group and whether SAM should offer several masks (a lone click
    is ambiguous: part, object or whole; SAM then returns three and the best is kept)."""
    points = list(prompts.positives)
    if prompts.strokes is not None and prompts.strokes.any():
        points += [(x + 0.5, y + 0.5) for x, y in interior_points(prompts.strokes, 3)]
    labels = [1] * len(points) + [0] * len(prompts.negatives)
    points += list(prompts.negatives)
    box = prompts.boxes[0] if prompts.boxes else None
    if box is None and prompts.strokes is not None and prompts.strokes.any():
        ys, xs = np.nonzero(prompts.strokes)
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    multimask = box is None and len(points) == 1
    return SamPrompt(box=box, points=points, labels=labels), multimask
