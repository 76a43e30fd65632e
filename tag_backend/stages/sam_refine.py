"""Optional stage: SAM 2 boundaries for TAG's segments, and SAM masks for interactive prompts.

TAG's segments come from a 14-16 px patch grid smoothed by a CRF, so their edges are blocky.
Here every segment becomes SAM 2 prompts and SAM's masks replace the coarse ones:

* **Prompts.** Each connected part of a segment (the largest :attr:`max_components` parts of at
  least :attr:`min_component_share` of the segment) gives one prompt: its bounding box, up to
  :attr:`positive_points` interior points (maxima of the distance to the part's edge, spread
  apart) and up to :attr:`negative_points` points inside the neighbouring segments that touch
  it (their most interior pixel near the part's box, so SAM does not leak into them).
* **Decoding.** The image is encoded once (:meth:`SamRefiner.embed`; the same embeddings serve
  interactive clicks); all prompts go through the mask decoder in batches with
  ``multimask_output=False`` (SAM's single-mask output for box prompts).
* **Safety.** A part's SAM mask is accepted only if its IoU with the coarse part reaches
  :attr:`min_iou`: SAM may answer a box with a different object (or, with weights that do not
  fit the image domain, with nothing sensible); the coarse part is kept then.
* **Overlaps.** At every pixel the accepted segment with the highest SAM logit above
  :attr:`mask_threshold` wins (``post_process_masks(apply_non_overlapping_constraints=True)``
  resolves objects the same way); pixels of a refined segment that no SAM mask claims go to the
  nearest pixel of another segment, and segments that were not refined keep their pixels.

Masks are upsampled exactly as ``Sam2Processor.post_process_masks`` does (bilinear,
``align_corners=False`` from the 256x256 low-resolution logits), one segment at a time so memory
stays O(H x W). The result is resolved at the original size up to :attr:`max_work_side` pixels
on the long side (larger images: resolved at that size, then resized with nearest neighbour).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..sam_models import LoadedSam
from .pooling import mask_weights

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass
class SamImage:
    """SAM 2 image embeddings of one image, reused by every prompt on it.

    embeddings: the multi-level feature maps of ``Sam2Model.get_image_embeddings``.
    original_size: (H, W) of the image the prompts' pixel coordinates refer to.
    """

    embeddings: list[torch.Tensor]
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(e.numel() * e.element_size() for e in self.embeddings)


@dataclass
class SamPrompt:
    """One object to segment: an optional box and points, in original-image pixel coordinates.

    box: (x0, y0, x1, y1); points: (x, y); labels: 1 (object) or 0 (not the object) per point.
    """

    box: Box | None = None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} points but {len(self.labels)} point labels")
        if self.box is None and not self.points:
            raise ValueError("a SAM prompt needs a box or at least one point")
        if any(lab not in (0, 1) for lab in self.labels):
            raise ValueError("point labels must be 1 (object) or 0 (background)")


class SamRefiner:
    """SAM 2 on TAG segments and interactive prompts (see the module docstring)."""

    def __init__(self, sam: LoadedSam, *, positive_points: int = 3, negative_points: int = 4,
                 max_components: int = 3, min_component_share: float = 0.2, min_iou: float = 0.5,
                 mask_threshold: float = 0.0, prompts_per_call: int = 32,
                 max_work_side: int = 2048) -> None:
        if positive_points < 1:
            raise ValueError("positive_points must be >= 1")
        if not 0.0 <= min_iou <= 1.0:
            raise ValueError(f"min_iou must be in [0, 1], got {min_iou}")
        self.sam = sam
        self.positive_points, self.negative_points = positive_points, negative_points
        self.max_components, self.min_component_share = max_components, min_component_share
        self.min_iou, self.mask_threshold = min_iou, mask_threshold
        self.prompts_per_call, self.max_work_side = prompts_per_call, max_work_side

    @property
    def model_id(self) -> str:
        return self.sam.model_id

    # ------------------------------------------------------------------ SAM calls
    @torch.inference_mode()
    def embed(self, rgb: np.ndarray) -> SamImage:
        """Encode an (H, W, 3) uint8 image once (the expensive part of SAM)."""
        # The processor wraps the array in a tensor; a read-only view (PIL-backed) must be copied.
        rgb = rgb if rgb.flags.writeable else rgb.copy()
        inputs = self.sam.processor(images=rgb, return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.sam.device, self.sam.dtype)
        embeddings = self.sam.model.get_image_embeddings(pixels)
        return SamImage(embeddings=list(embeddings), original_size=(int(rgb.shape[0]), int(rgb.shape[1])))

    @torch.inference_mode()
    def decode(self, image: SamImage, prompts: list[SamPrompt], multimask: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution mask logits (P, M, 256, 256) float32 and IoU predictions (P, M).

        M is 3 with ``multimask`` (SAM's candidate masks for an ambiguous prompt), else 1.
        Prompts with and without a box are decoded in separate calls (the model needs one
        kind per call); the output keeps the order of ``prompts``.
        """
        if not prompts:
            raise ValueError("no prompts to decode")
        masks: list[torch.Tensor | None] = [None] * len(prompts)
        ious: list[torch.Tensor | None] = [None] * len(prompts)
        groups = [[i for i, p in enumerate(prompts) if p.box is not None],
                  [i for i, p in enumerate(prompts) if p.box is None]]
        for group in groups:
            for start in range(0, len(group), self.prompts_per_call):
                idx = group[start:start + self.prompts_per_call]
                low, iou = self._decode_batch(image, [prompts[i] for i in idx], multimask)
                for j, i in enumerate(idx):
                    masks[i], ious[i] = low[j], iou[j]
        return torch.stack(masks), torch.stack(ious)

    def _decode_batch(self, image: SamImage, prompts: list[SamPrompt], multimask: bool):
        boxes = [[list(p.box) for p in prompts]] if prompts[0].box is not None else None
        with_points = any(p.points for p in prompts)
        # A box-only prompt among prompts with points gets one padding point (label -10, which
        # the prompt encoder ignores), so the nested lists have the depth the processor expects.
        points = [[[list(pt) for pt in p.points] or [[0.0, 0.0]] for p in prompts]] if with_points else None
        labels = [[list(p.labels) or [-10] for p in prompts]] if with_points else None
        inputs = self.sam.processor(original_sizes=[list(image.original_size)], input_points=points,
                                    input_labels=labels, input_boxes=boxes, return_tensors="pt")
        device, dtype = self.sam.device, self.sam.dtype
        out = self.sam.model(
            image_embeddings=image.embeddings,
            input_points=inputs["input_points"].to(device, dtype) if with_points else None,
            input_labels=inputs["input_labels"].to(device) if with_points else None,
            input_boxes=inputs["input_boxes"].to(device, dtype) if boxes is not None else None,
            multimask_output=multimask,
        )
        return out.pred_masks[0].float().cpu(), out.iou_scores[0].float().cpu()

    @staticmethod
    def upsample(low_res: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(..., 256, 256) logits -> (..., H, W), exactly as ``post_process_masks`` resamples."""
        shape = low_res.shape
        flat = low_res.reshape(-1, 1, *shape[-2:]).float()
        up = F.interpolate(flat, size, mode="bilinear", align_corners=False)
        return up.reshape(*shape[:-2], *size)

    # ------------------------------------------------------------------ refinement
    def refine(self, image: SamImage, labels: np.ndarray, grid: tuple[int, int]
               ) -> tuple[np.ndarray, torch.Tensor]:
        """SAM boundaries for a coarse (h, w) segment map of the image embedded as ``image``.

        Returns the refined segment ids at the original (H, W) (ids 0..K'-1, every id present,
        in the order of the coarse ids) and their (K', gh*gw) coverage of the ``grid`` (for
        pooling).
        """
        H, W = image.original_size
        prompts, owners, parts = self.segment_prompts(labels, (H, W))
        accepted: dict[int, torch.Tensor] = {}
        if prompts:
            low, _ = self.decode(image, prompts)
            small = self.upsample(low[:, 0], labels.shape) > self.mask_threshold
            for n, (seg, part) in enumerate(zip(owners, parts)):
                iou = _iou(small[n].numpy(), part)
                if iou < self.min_iou:
                    logger.debug("segment %d: SAM mask rejected (IoU %.2f with the coarse part)", seg, iou)
                    continue
                accepted[seg] = low[n, 0] if seg not in accepted else torch.maximum(accepted[seg], low[n, 0])
        work = _work_size((H, W), self.max_work_side)
        resolved = self._resolve(labels, accepted, work)
        present = np.unique(resolved)
        remap = np.full(int(labels.max()) + 1, -1, np.int64)
        remap[present] = np.arange(len(present))
        resolved = remap[resolved]
        # Pooling weights from the working-size map (one mask at a time); enlarging it with
        # nearest neighbour afterwards keeps every id present.
        weights = mask_weights([resolved == k for k in range(len(present))], grid)
        if work != (H, W):
            resolved = cv2.resize(resolved.astype(np.int32), (W, H), interpolation=cv2.INTER_NEAREST)
        logger.debug("SAM refined %d of %d segments", len(accepted), int(labels.max()) + 1)
        return resolved.astype(np.int64), weights

    def _resolve(self, labels: np.ndarray, accepted: dict[int, torch.Tensor],
                 size: tuple[int, int]) -> np.ndarray:
        H, W = size
        coarse = cv2.resize(labels.astype(np.int32), (W, H), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        if not accepted:
            return coarse
        best = np.full((H, W), self.mask_threshold, np.float32)
        owner = np.full((H, W), -1, np.int64)
        for seg, low in accepted.items():  # one segment at a time: O(H x W) memory
            up = self.upsample(low, (H, W)).numpy()
            better = up > best
            best[better] = up[better]
            owner[better] = seg
        refined = np.zeros(int(labels.max()) + 1, bool)
        refined[list(accepted)] = True
        keep = (owner < 0) & ~refined[coarse]
        owner[keep] = coarse[keep]  # segments SAM did not refine keep their unclaimed pixels
        filled = owner.copy()
        for seg in accepted:  # pixels SAM left out of a refined segment: the nearest other label
            hole = (owner < 0) & (coarse == seg)
            if hole.any():
                filled[hole] = self._nearest_other(owner, hole, seg)
        return filled

    @staticmethod
    def _nearest_other(owner: np.ndarray, hole: np.ndarray, seg: int) -> np.ndarray:
        """For the ``hole`` pixels: the label of the nearest pixel owned by another segment
        (searched in the hole's box grown by 10 % of the image; ``seg`` itself if none)."""
        H, W = owner.shape
        ys, xs = np.nonzero(hole)
        m = 2 + int(0.1 * max(H, W))
        y0, y1, x0, x1 = max(0, ys.min() - m), min(H, ys.max() + m + 1), max(0, xs.min() - m), min(W, xs.max() + m + 1)
        window = owner[y0:y1, x0:x1]
        donors = (window >= 0) & (window != seg)
        if not donors.any():
            return np.full(len(ys), seg, np.int64)
        iy, ix = ndimage.distance_transform_edt(~donors, return_distances=False, return_indices=True)
        return window[iy[ys - y0, xs - x0], ix[ys - y0, xs - x0]]

    def segment_prompts(self, labels: np.ndarray, size: tuple[int, int]
                        ) -> tuple[list[SamPrompt], list[int], list[np.ndarray]]:
        """Prompts for every segment part of an (h, w) map, in (H, W) pixel coordinates.

        Returns the prompts, the segment id of each and the part's (h, w) mask.
        """
        h, w = labels.shape
        sx, sy = size[1] / w, size[0] / h
        prompts, owners, parts = [], [], []
        for seg in range(int(labels.max()) + 1):
            mask = labels == seg
            area = int(mask.sum())
            if area == 0:
                continue
            count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=8)
            order = sorted(range(1, count), key=lambda c: -stats[c, cv2.CC_STAT_AREA])
            for c in order[:self.max_components]:
                if stats[c, cv2.CC_STAT_AREA] < self.min_component_share * area:
                    break
                part = comp == c
                x0, y0 = stats[c, cv2.CC_STAT_LEFT], stats[c, cv2.CC_STAT_TOP]
                x1, y1 = x0 + stats[c, cv2.CC_STAT_WIDTH], y0 + stats[c, cv2.CC_STAT_HEIGHT]
                positives = interior_points(part, self.positive_points)
                negatives = self._negative_points(labels, seg, part, (x0, y0, x1, y1))
                points = [((x + 0.5) * sx, (y + 0.5) * sy) for x, y in positives + negatives]
                prompts.append(SamPrompt(box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy), points=points,
                                         labels=[1] * len(positives) + [0] * len(negatives)))
                owners.append(seg)
                parts.append(part)
        return prompts, owners, parts

    def _negative_points(self, labels: np.ndarray, seg: int, part: np.ndarray,
                         box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
        if self.negative_points <= 0:
            return []
        # Neighbours' points are looked for in the part's box grown by a quarter of its size:
        # close enough to tell SAM where the object ends, never across the image.
        margin = max(2, int(0.25 * max(box[2] - box[0], box[3] - box[1])))
        x0, y0 = max(0, box[0] - margin), max(0, box[1] - margin)
        x1, y1 = min(labels.shape[1], box[2] + margin), min(labels.shape[0], box[3] + margin)
        ring = cv2.dilate(part.view(np.uint8), np.ones((3, 3), np.uint8), iterations=2).astype(bool) & ~part
        touching, counts = np.unique(labels[ring], return_counts=True)
        neighbours = [int(n) for n, _ in sorted(zip(touching, counts), key=lambda t: -t[1]) if n != seg]
        window = labels[y0:y1, x0:x1]
        out = []
        for n in neighbours[:self.negative_points]:
            inside = window == n
            if inside.any():
                (x, y), = interior_points(inside, 1)
                out.append((x + x0, y + y0))
        return out


def interior_points(mask: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` (x, y) pixels deep inside ``mask``, spread apart.

    The first is the pixel farthest from the mask's edge; each next one is the deepest pixel
    outside a disc (of the first one's depth) around the points already taken.
    """
    depth = cv2.distanceTransform(np.pad(mask.view(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    points: list[tuple[int, int]] = []
    radius = None
    yy = xx = None
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
        if depth[y, x] <= 0:
            break
        points.append((int(x), int(y)))
        if radius is None:
            radius = max(float(depth[y, x]), 1.0)
            yy, xx = np.ogrid[:depth.shape[0], :depth.shape[1]]
        depth = np.where((yy - y) ** 2 + (xx - x) ** 2 <= radius * radius, 0, depth)
    return points


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _work_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    H, W = size
    scale = min(1.0, max_side / max(H, W))
    return (max(1, round(H * scale)), max(1, round(W * scale)))
