"""Synthetic scenes with exact ground truth, shared by the tests."""
from __future__ import annotations

import numpy as np
from PIL import Image

PALETTE = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (240, 220, 40), (200, 60, 220), (40, 220, 220)]


def flat_shapes(size: int = 448, background=(128, 128, 128), seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """Grey background + a large rectangle and a large disc of flat colours; gt ids 0, 1, 2."""
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = background
    gt = np.zeros((size, size), np.int64)
    a, b = int(size * 0.08), int(size * 0.45)
    c1 = PALETTE[int(rng.integers(len(PALETTE)))]
    img[a:b, a:int(size * 0.9)] = c1
    gt[a:b, a:int(size * 0.9)] = 1
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size * 0.72) ** 2 + (xx - size * 0.5) ** 2 < (size * 0.2) ** 2
    c2 = PALETTE[(PALETTE.index(c1) + 2) % len(PALETTE)]
    img[disc] = c2
    gt[disc] = 2
    return Image.fromarray(img), gt
