"""Clean region masks before they become brush RLE.

Speckle, not resolution, drives the size of Label Studio's brush RLE and the browser's memory
(measured with the SDK's ``mask2rle``: a noisy 1024² mask is ~950 KB of RLE and 1.2 s to encode; ls#4940: a
few hundred brush regions made the browser use tens of GB). So every mask is smoothed, tiny
islands and pin-holes are removed, and the number of regions per image is capped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

_CROSS = ndimage.generate_binary_structure(2, 1)
_SMOOTH_MARGIN = 2  # pixels around the bounding box (see _smooth)


@dataclass(frozen=True)
class MaskCleaning:
    """Cleaning knobs, as fractions of the image area so they scale with resolution.

    min_component: connected components (and holes) smaller than this share are removed/filled.
    min_region: a region whose cleaned mask is smaller than this share is dropped.
    smooth: run one 3x3 morphological opening + closing (removes one-pixel speckle).
    """

    min_component: float = 0.0005
    min_region: float = 0.001
    smooth: bool = True


def clean_mask(mask: np.ndarray, cleaning: MaskCleaning = MaskCleaning()) -> np.ndarray:
    """A boolean copy of ``mask`` without speckle, tiny islands and small holes."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    out = np.asarray(mask, dtype=bool)
    if not out.any():
        return out.copy()
    if cleaning.smooth and min(out.shape) >= 8:
        out = _smooth(out)
    min_pixels = max(1, int(cleaning.min_component * out.size))
    out = _drop_small_components(out, min_pixels)
    out = ~_drop_small_components(~out, min_pixels)  # fill holes smaller than min_pixels
    return out


def _smooth(mask: np.ndarray) -> np.ndarray:
    """3x3-cross opening, then closing (keeping the original pixels), computed on the mask's
    bounding box plus a 2-pixel margin: a region is usually a small part of the image, and the
    four full-image erosions were the largest cost of serializing a prediction. The result is
    the same as on the whole image: opening never grows the mask and closing grows it by at
    most one pixel before shrinking it back, so nothing reaches the margin's outer ring, and
    outside the box both see zeros (the image border is zero for both, ``border_value=0``)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom = max(0, rows[0] - _SMOOTH_MARGIN), min(mask.shape[0], rows[-1] + _SMOOTH_MARGIN + 1)
    left, right = max(0, cols[0] - _SMOOTH_MARGIN), min(mask.shape[1], cols[-1] + _SMOOTH_MARGIN + 1)
    box = mask[top:bottom, left:right]
    opened = ndimage.binary_opening(box, structure=_CROSS)
    out = np.zeros_like(mask)
    out[top:bottom, left:right] = ndimage.binary_closing(opened, structure=_CROSS, border_value=0) | opened
    return out


def _drop_small_components(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels, count = ndimage.label(mask, structure=_CROSS)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]


def clean_regions(
    masks: list[np.ndarray], max_regions: int, cleaning: MaskCleaning = MaskCleaning()
) -> list[tuple[int, np.ndarray]]:
    """Clean each mask and keep at most ``max_regions`` of the largest.

    Returns ``(original index, cleaned mask)`` pairs in the input order, so callers can pair
    cleaned masks with their names and scores. Masks that vanish when cleaned are dropped.
    """
    if max_regions < 0:
        raise ValueError("max_regions must be >= 0")
    cleaned: list[tuple[int, np.ndarray, int]] = []
    for i, mask in enumerate(masks):
        m = clean_mask(mask, cleaning)
        area = int(m.sum())
        if area >= max(1, int(cleaning.min_region * m.size)):
            cleaned.append((i, m, area))
    if len(cleaned) > max_regions:
        logger.debug("capping %d regions to the %d largest", len(cleaned), max_regions)
        cleaned = sorted(cleaned, key=lambda t: -t[2])[:max_regions]
        cleaned.sort(key=lambda t: t[0])
    return [(i, m) for i, m, _ in cleaned]
