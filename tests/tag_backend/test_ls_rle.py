"""The vectorised brush RLE writes exactly the SDK's bytes, and Label Studio's decoder reads it."""
from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from tag_backend.ls.rle import mask_to_rle


def _sdk(mask: np.ndarray) -> list[int]:
    return [int(v) for v in mask2rle(np.where(mask, 255, 0).astype(np.uint8))]


def _run_masks() -> list[np.ndarray]:
    """Runs at every token-size boundary (x4 RGBA: 8, 16, 256, 65,536 bytes) and past them."""
    masks = []
    for run in (1, 2, 3, 4, 5, 63, 64, 65, 16383, 16384, 16385, 32768, 32769, 70000):
        inside = np.zeros(run + 10, bool)
        inside[3:3 + run] = True
        masks += [inside[None], ~inside[None]]
    return masks


def _random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    masks = [np.zeros((5, 7), bool), np.ones((300, 400), bool), np.ones((1, 1), bool), np.zeros((1, 1), bool)]
    for _ in range(30):  # speckle of every density
        h, w = rng.integers(1, 200, 2)
        masks.append(rng.random((h, w)) < rng.random())
    for _ in range(10):  # blobs
        h, w = rng.integers(20, 300, 2)
        blocks = rng.random((h // 7 + 1, w // 7 + 1)) < 0.5
        masks.append(np.kron(blocks, np.ones((7, 7), bool))[:h, :w])
    return masks


@pytest.mark.parametrize("mask", _run_masks() + _random_masks(), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_same_bytes_as_the_sdk_and_decodes_back(mask):
    rle = mask_to_rle(mask)
    assert rle == _sdk(mask)
    decoded = decode_rle(rle).reshape(*mask.shape, 4)
    assert ((decoded[..., 3] > 0) == mask).all()


def test_non_boolean_masks_paint_every_non_zero_pixel():
    labels = np.array([[0, 2, 2], [1, 0, 7]])
    assert mask_to_rle(labels) == mask_to_rle(labels != 0)


@pytest.mark.parametrize("mask, message", [(np.zeros(5, bool), "2-D"), (np.zeros((0, 4), bool), "empty")])
def test_bad_masks_are_refused(mask, message):
    with pytest.raises(ValueError, match=message):
        mask_to_rle(mask)
