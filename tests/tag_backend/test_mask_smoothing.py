"""Mask smoothing runs on the region's bounding box; it must equal the whole-image computation,
also for regions touching the image border and for one-pixel-wide shapes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tag_backend.masks import MaskCleaning, clean_mask

CROSS = ndimage.generate_binary_structure(2, 1)


def _whole_image(mask: np.ndarray) -> np.ndarray:
    opened = ndimage.binary_opening(mask, structure=CROSS)
    return ndimage.binary_closing(opened, structure=CROSS, border_value=0) | opened


def _masks():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(8, 70, 2)
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):  # blobs, some cut by the border
            y, x = rng.integers(-5, h + 5), rng.integers(-5, w + 5)
            mask[max(0, y):max(0, y + rng.integers(1, 20)), max(0, x):max(0, x + rng.integers(1, 20))] = True
        mask ^= rng.random((h, w)) < 0.05  # speckle and pinholes
        yield mask
    line = np.zeros((20, 20), bool)
    line[:, 7] = True  # one pixel wide, from border to border
    yield line
    full = np.ones((12, 9), bool)
    yield full


@pytest.mark.parametrize("mask", list(_masks()))
def test_smoothing_on_the_bounding_box_equals_the_whole_image(mask):
    smoothing_only = MaskCleaning(min_component=0.0, min_region=0.0, smooth=True)
    assert np.array_equal(clean_mask(mask, smoothing_only), _whole_image(mask))
