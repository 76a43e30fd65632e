"""Guided mode: give each region one of the project's own labels.

When the project's BrushLabels lists labels (tag_backend.ls.controls), each region is labelled in
this order (docs/interactive.md, "Naming over the project's labels"):

1. **Names first.** The region's free-form name is matched (case-insensitively) against each
   label's value and its ``predicted_values`` synonyms (``<Label value="car"
   predicted_values="truck, van"/>``, the Label Studio convention for mapping model outputs to a
   label). A match takes that label whatever CLIP says.
2. **Zero-shot classification over the label set.** Otherwise the region's own CLIP image
   embedding (``SegmentLabel.embedding``: dense CLIP pooled inside the mask) is scored against
   one text embedding per label, and the label's probability is the softmax of the cosines at
   the CLIP model's own logit scale (CLIP zero-shot classification, Radford et al. 2021). Each
   label's text embedding is the normalised mean over :data:`PROMPT_TEMPLATES` and over the label
   and its synonyms; it is computed once per label set.
3. **Threshold.** The best label is taken when its probability reaches the control's
   ``model_score_threshold`` (or ``TAG_GUIDED_THRESHOLD``). Below it the region gets
   ``TAG_GUIDED_FALLBACK`` when that is one of the project's labels; otherwise, per
   ``TAG_GUIDED_BELOW``, it keeps its free-form name as its label (``keep``) or is dropped
   (``drop``).

Fallback: a region without an image embedding (none is produced by the engine, but regions can
come from elsewhere) is scored with the CLIP text embedding of its name in place of the image
embedding. Plain name-to-label text cosine is not used as a decision rule any more: unrelated
words are already 0.7-0.8 apart in CLIP's text space, so it cannot separate labels.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

EncodeText = Callable[[Sequence[str]], np.ndarray]

#: Prompt ensemble for label text embeddings: "a photo of a {}." plus the seven ImageNet templates
#: OpenAI selected for CLIP zero-shot classification (CLIP repository, notebooks/
#: Prompt_Engineering_for_ImageNet.ipynb).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: What happens to a region whose best label is below the threshold (and no fallback label).
BELOW_THRESHOLD_POLICIES = ("keep", "drop")


@dataclass(frozen=True)
class ProjectLabel:
    """One ``<Label>`` of the project: its value and its ``predicted_values`` synonyms."""

    value: str
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Snap:
    """The label chosen for one region.

    label: the brush label (None: drop the region).
    score: the label's zero-shot probability (1.0 for a name / synonym match).
    method: "name" (free-form name or synonym matched), "zero-shot" (probability at or above
        the threshold), "fallback" (below it: TAG_GUIDED_FALLBACK), "kept" (below it: the
        free-form name is the label) or "dropped".
    """

    label: str | None
    score: float
    method: str


def _key(text: str) -> str:
    return " ".join(text.strip().lower().split())


class LabelSnapper:
    """Labels regions with a fixed label set; label text embeddings are computed once per set.

    encode: the CLIP text encoder (``(n, D)`` L2-normalised rows).
    threshold: default probability threshold in [0, 1] (a control's ``model_score_threshold``
        overrides it per project).
    fallback: label given below the threshold when it is one of the project's labels.
    below: "keep" or "drop" (see the module docstring) when there is no usable fallback.
    logit_scale: the CLIP model's learned temperature (``exp(logit_scale)``, 100 for trained
        CLIP), or a function returning it (read on first use, so building a snapper does not
        load the model).
    """

    def __init__(self, encode: EncodeText, threshold: float, fallback: str | None, *,
                 below: str = "keep", logit_scale: float | Callable[[], float] = 100.0,
                 templates: Sequence[str] = PROMPT_TEMPLATES) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"guided threshold must be a probability in [0, 1], got {threshold}")
        if below not in BELOW_THRESHOLD_POLICIES:
            raise ValueError(f"below-threshold policy must be one of {BELOW_THRESHOLD_POLICIES}, got {below!r}")
        if not callable(logit_scale) and logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError("every prompt template needs a '{}' placeholder")
        self.encode, self.threshold, self.fallback = encode, threshold, fallback
        self.below, self.templates = below, tuple(templates)
        self._logit_scale = logit_scale
        self._vectors: dict[tuple[ProjectLabel, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def logit_scale(self) -> float:
        if callable(self._logit_scale):
            scale = float(self._logit_scale())
            if scale <= 0:
                raise ValueError(f"logit_scale must be positive, got {scale}")
            self._logit_scale = scale
        return float(self._logit_scale)

    def label_vectors(self, labels: tuple[ProjectLabel, ...]) -> np.ndarray:
        """(L, D) unit rows: each label's prompt-ensemble text embedding (cached per label set)."""
        with self._lock:
            vectors = self._vectors.get(labels)
        if vectors is not None:
            return vectors
        texts, owner = [], []
        for i, label in enumerate(labels):
            for word in dict.fromkeys((label.value, *label.synonyms)):
                texts.extend(t.format(word) for t in self.templates)
                owner.extend([i] * len(self.templates))
        encoded = np.asarray(self.encode(texts), dtype=np.float64)
        sums = np.zeros((len(labels), encoded.shape[1]))
        np.add.at(sums, np.asarray(owner), encoded)
        vectors = (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)
        with self._lock:
            self._vectors[labels] = vectors
        return vectors

    def probabilities(self, queries: np.ndarray, labels: tuple[ProjectLabel, ...]) -> np.ndarray:
        """(n, L) zero-shot label probabilities of L2-normalised CLIP embeddings."""
        logits = self.logit_scale * (np.asarray(queries, np.float64) @ self.label_vectors(labels).T)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def snap(self, names: Sequence[str], embeddings: Sequence[np.ndarray | None],
             labels: tuple[ProjectLabel, ...], threshold: float | None = None) -> list[Snap]:
        """One :class:`Snap` per region (``names[i]`` with image embedding ``embeddings[i]``)."""
        if not labels:
            raise ValueError("guided mode needs at least one project label")
        if len(names) != len(embeddings):
            raise ValueError(f"{len(names)} names but {len(embeddings)} embeddings")
        if not names:
            return []
        threshold = self.threshold if threshold is None else threshold
        by_name = {}
        for label in labels:
            for word in (label.value, *label.synonyms):
                by_name.setdefault(_key(word), label.value)
        out: list[Snap | None] = [None] * len(names)
        open_rows = []
        for i, name in enumerate(names):
            if _key(name) in by_name:
                out[i] = Snap(by_name[_key(name)], 1.0, "name")
            else:
                open_rows.append(i)
        if open_rows:
            queries = self._queries([names[i] for i in open_rows], [embeddings[i] for i in open_rows])
            probs = self.probabilities(queries, labels)
            for i, row in zip(open_rows, probs):
                best = int(np.argmax(row))
                out[i] = (Snap(labels[best].value, float(row[best]), "zero-shot")
                          if row[best] >= threshold else self._below(names[i], float(row[best]), labels))
        return [s for s in out if s is not None]

    def _queries(self, names: list[str], embeddings: list[np.ndarray | None]) -> np.ndarray:
        missing = [i for i, e in enumerate(embeddings) if e is None]
        text = self.encode([names[i] for i in missing]) if missing else None
        rows = []
        for i, e in enumerate(embeddings):
            v = np.asarray(text[missing.index(i)] if e is None else e, dtype=np.float64)
            rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
        return np.stack(rows)

    def _below(self, name: str, score: float, labels: tuple[ProjectLabel, ...]) -> Snap:
        values = {label.value for label in labels}
        if self.fallback in values:
            return Snap(self.fallback, score, "fallback")
        if self.fallback:
            logger.warning("TAG_GUIDED_FALLBACK %r is not a label of this project (labels: %s)",
                           self.fallback, ", ".join(sorted(values)))
        if self.below == "keep":
            return Snap(name, score, "kept")
        return Snap(None, score, "dropped")


def clip_temperature(clip) -> float:
    """``exp(logit_scale)`` of an open_clip CLIP model or a
    :class:`~tag_backend.models.LoadedClip` (100 for trained CLIP; 100 if absent)."""
    scale = getattr(clip, "logit_scale", None)
    return float(scale.detach().float().exp()) if scale is not None else 100.0
