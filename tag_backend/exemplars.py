"""Visual exemplars from annotator corrections: region embeddings with the corrected name.

At predict time a segment whose embedding has cosine >= ``threshold`` with an exemplar takes
that exemplar's name: the backend learns from corrections without retraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ExemplarMemory:
    """names: n corrected names; embeddings: (n, D) float32 L2-normalised region embeddings."""

    names: list[str] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def __len__(self) -> int:
        return len(self.names)

    def match(self, queries: np.ndarray, threshold: float) -> list[tuple[str, float] | None]:
        """For each query row (L2-normalised), the best exemplar name and cosine, if >= threshold."""
        if not self.names or self.embeddings.shape[1] != queries.shape[1]:
            return [None] * len(queries)
        sims = queries @ self.embeddings.T
        best = sims.argmax(1)
        return [(self.names[j], float(sims[i, j])) if sims[i, j] >= threshold else None
                for i, j in enumerate(best)]


@dataclass
class AliasMap:
    """Names annotators keep correcting: predicted name -> the name they want instead.

    ``mapping`` is keyed by the concept database's normalised text; ``normalize`` is that
    normalisation. Only aliases corrected at least ``TAG_ALIAS_MIN_COUNT`` times are loaded, so one
    odd correction does not rename every future region.
    """

    mapping: dict[str, str] = field(default_factory=dict)
    normalize: object = staticmethod(lambda s: s.strip().casefold())

    def lookup(self, name: str) -> str | None:
        target = self.mapping.get(self.normalize(name))
        return target if target and target != name else None
