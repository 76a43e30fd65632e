"""One score scale: the probability that a region's name is right.

A region's name comes from two kinds of evidence on different scales — CLIP image-text cosine
of the name (TAG's retrieval and re-scoring; ~0.15-0.35 for CLIP ViT models) and the cosine to
an annotator's exemplar (region-region, ~0.8-1.0 when it matches). Each is mapped through a
logistic function to a probability, and when both support the chosen name they are combined as
independent evidence (noisy-OR). The result is what Label Studio shows and sorts by (region and
task score), so a region with weak evidence always sorts below one with strong evidence,
whatever produced the name.

The constants are the decision points of each signal, not fits to one dataset:

* retrieval: ``p = sigmoid(RETRIEVAL_SLOPE * (cosine - RETRIEVAL_MIDPOINT)
  + MARGIN_SLOPE * margin)`` where ``margin`` is the cosine lead of the best name over the
  next *different* shown name (a clear winner is more often right than a tie). The midpoint
  0.25 sits between the region-text cosines of unrelated and matching names of CLIP ViT-B/16
  and ViT-L/14 dense features (unrelated ~0.15-0.22, matching ~0.25-0.32); a slope of 30 spans
  that range from p ~0.1 to ~0.9.
* exemplar: ``p = sigmoid(EXEMPLAR_SLOPE * (cosine - EXEMPLAR_MIDPOINT))``: 0.5 at 0.85 and
  ~0.88 at the default take-over threshold 0.90 (``TAG_EXEMPLAR_THRESHOLD``).

They are not fitted to a labelled set (none with real weights is available to this project's
tests); the ordering they give is what is tested. Refit them on labelled regions before trusting
absolute values on another encoder.
"""
from __future__ import annotations

import math

RETRIEVAL_MIDPOINT = 0.25
RETRIEVAL_SLOPE = 30.0
MARGIN_SLOPE = 20.0
EXEMPLAR_MIDPOINT = 0.85
EXEMPLAR_SLOPE = 40.0


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def retrieval_probability(cosine: float, margin: float = 0.0) -> float:
    """Probability that a name retrieved with CLIP ``cosine`` (and ``margin``) is right."""
    return _sigmoid(RETRIEVAL_SLOPE * (cosine - RETRIEVAL_MIDPOINT) + MARGIN_SLOPE * margin)


def exemplar_probability(cosine: float) -> float:
    """Probability that a region ``cosine``-similar to an annotator's exemplar shares its name."""
    return _sigmoid(EXEMPLAR_SLOPE * (cosine - EXEMPLAR_MIDPOINT))


def combine(*probabilities: float) -> float:
    """Independent evidence for the same name (noisy-OR)."""
    miss = 1.0
    for p in probabilities:
        miss *= 1.0 - min(max(p, 0.0), 1.0)
    return 1.0 - miss
