"""One score scale: the probability that a region's name is right.

A region's name comes from two kinds of evidence on different scales — CLIP image-text cosines
of the candidate names (TAG's retrieval and re-scoring; ~0.15-0.35 for real CLIP models) and the
cosine to an annotator's exemplar (region-region, ~0.8-1.0 when it matches). Each is turned into
a probability, and when both support the chosen name they are combined as independent evidence
(noisy-OR). The result is what Label Studio shows and sorts by (region and task score), so a
region with weak evidence sorts below one with strong evidence, whatever produced the name.

* **retrieval**: CLIP's own zero-shot probability of the chosen name among the segment's
  candidate names: ``softmax(logit_scale * cosines)`` with the model's learned temperature
  (``logit_scale.exp()``: 100 for OpenAI's CLIP). It is the probability *given that one of the
  candidates is right*, so it is an upper bound when retrieval missed the right name. A segment
  with a single candidate has no competing evidence: ``SINGLE_CANDIDATE`` (0.5). The
  placeholder name given when retrieval found nothing scores 0.
* **exemplar**: ``sigmoid(EXEMPLAR_SLOPE * (cosine - EXEMPLAR_MIDPOINT))``: 0.5 at 0.85 and
  ~0.88 at the default take-over threshold 0.90 (``TAG_EXEMPLAR_THRESHOLD``), ~0.98 at 0.95.

The exemplar constants are decision points chosen around the take-over threshold, not fits to a
labelled set (none with real weights is available to this project's tests); the ordering they
give is what is tested (a region an annotator would fix sorts below one they would keep).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EXEMPLAR_MIDPOINT = 0.85
EXEMPLAR_SLOPE = 40.0
SINGLE_CANDIDATE = 0.5


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def retrieval_probability(cosines: Sequence[float], chosen: int, logit_scale: float) -> float:
    """CLIP's zero-shot probability of candidate ``chosen`` among ``cosines`` (one per name)."""
    if len(cosines) < 2:
        return SINGLE_CANDIDATE if len(cosines) else 0.0
    logits = logit_scale * np.asarray(cosines, dtype=np.float64)
    logits -= logits.max()
    weights = np.exp(logits)
    return float(weights[chosen] / weights.sum())


def exemplar_probability(cosine: float) -> float:
    """Probability that a region ``cosine``-similar to an annotator's exemplar shares its name."""
    return _sigmoid(EXEMPLAR_SLOPE * (cosine - EXEMPLAR_MIDPOINT))


def combine(*probabilities: float) -> float:
    """Independent evidence for the same name (noisy-OR)."""
    miss = 1.0
    for p in probabilities:
        miss *= 1.0 - min(max(p, 0.0), 1.0)
    return 1.0 - miss
