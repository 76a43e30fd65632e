"""Guided mode: snap open-vocabulary names to the project's own labels.

When the project's BrushLabels lists labels (tag_backend.ls.controls), each retrieved name is
mapped to the label with the highest CLIP text cosine (no prompt, as everywhere in TAG). At or
above ``Settings.guided_threshold`` the region takes that label; below it the region gets
``Settings.guided_fallback`` if that is one of the project's labels, or is dropped. An exact
(case-insensitive) match always wins. The free-form name is kept for the per-region TextArea.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

EncodeText = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Snap:
    """The label a name was snapped to (None: drop the region) and the cosine."""

    label: str | None
    similarity: float


class LabelSnapper:
    """Snaps names to a fixed label set; label embeddings are computed once per label set."""

    def __init__(self, encode: EncodeText, threshold: float, fallback: str | None) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"guided_threshold must be a cosine in [-1, 1], got {threshold}")
        self.encode, self.threshold, self.fallback = encode, threshold, fallback
        self._labels: dict[tuple[str, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    def _label_vectors(self, labels: tuple[str, ...]) -> np.ndarray:
        with self._lock:
            vectors = self._labels.get(labels)
        if vectors is None:
            vectors = np.asarray(self.encode(list(labels)), dtype=np.float32)
            with self._lock:
                self._labels[labels] = vectors
        return vectors

    def snap(self, names: Sequence[str], labels: tuple[str, ...]) -> list[Snap]:
        """One :class:`Snap` per name."""
        if not labels:
            raise ValueError("guided mode needs at least one project label")
        if not names:
            return []
        sims = (
            np.asarray(self.encode(list(names)), dtype=np.float32) @ self._label_vectors(labels).T
        )
        lowered = {label.lower(): label for label in labels}
        fallback = self.fallback if self.fallback in labels else None
        if self.fallback and fallback is None:
            logger.warning(
                "TAG_GUIDED_FALLBACK %r is not a label of this project: regions below "
                "the threshold are dropped",
                self.fallback,
            )
        out = []
        for name, row in zip(names, sims):
            if name.strip().lower() in lowered:
                out.append(Snap(lowered[name.strip().lower()], 1.0))
                continue
            best = int(np.argmax(row))
            score = float(row[best])
            out.append(Snap(labels[best] if score >= self.threshold else fallback, score))
        return out
