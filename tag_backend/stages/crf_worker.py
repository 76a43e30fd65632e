"""The dense-CRF inference itself, run in a helper process.

pydensecrf2 holds the GIL for the whole inference (up to seconds per image), which froze every
other thread of the server (webhooks missed Label Studio's 1 s timeout). Running it in a spawned
helper process keeps the server responsive. This module imports only numpy and pydensecrf so
the helper process starts fast and small (no torch).
"""
from __future__ import annotations

import numpy as np


def crf_inference(rgb: np.ndarray, probs: np.ndarray, iterations: int, gaussian_sxy: float,
                  gaussian_compat: float, bilateral_sxy: float, bilateral_srgb: float,
                  bilateral_compat: float) -> np.ndarray:
    """(K, h, w) float32 refined probabilities from unary probabilities ``probs`` (K, h, w)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb,
                             rgbim=np.array(rgb, dtype=np.uint8, order="C", copy=True),
                             compat=bilateral_compat)
    return np.array(crf.inference(iterations), dtype=np.float32).reshape(k, h, w)


def ping() -> bool:
    """A no-op job that makes the helper process start (and import pydensecrf) ahead of use."""
    import pydensecrf.densecrf  # noqa: F401

    return True
