"""Map free-form region names to a dataset's classes by sentence-embedding cosine.

TAG's protocol maps every name to the nearest class (threshold off). The strict protocol only
accepts a class when the cosine reaches a threshold; other names stay unmatched (scored wrong).

Encoders: CLIP's own text tower (default: always available offline) or a local
sentence-transformers model directory (TAG used ``all-mpnet-base-v2``). sentence-transformers is
an optional dependency, imported only when asked for.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import TagError
from .datasets import EvalClass

logger = logging.getLogger(__name__)

UNMATCHED = -1
# Cosines of unrelated words are high for CLIP text (~0.7-0.8) and low for SBERT (~0.1-0.3).
# Neither value was calibrated with real weights here: pass --strict-threshold to change it.
DEFAULT_STRICT_THRESHOLD = {"clip": 0.85, "sentence-transformers": 0.5}


class MappingError(TagError):
    """The mapping encoder cannot be created (missing package or model directory)."""


class SentenceTransformerEncoder:
    """A local sentence-transformers model as a ``TextEncoder`` (L2-normalised float32)."""

    kind = "sentence-transformers"

    def __init__(self, path: str | Path, device: str | None = None) -> None:
        path = Path(path)
        if not path.is_dir():
            raise MappingError(
                f"{path}: not a directory; --mapping-model takes a local sentence-transformers "
                "model directory (e.g. all-mpnet-base-v2 saved with model.save(DIR)) or 'clip'"
            )
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise MappingError(
                "sentence-transformers is not installed; `pip install sentence-transformers` to map "
                "names with a sentence-transformers model, or use --mapping-model clip"
            ) from None
        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as exc:  # the library raises many types for a broken directory
            logger.debug("sentence-transformers load failed", exc_info=True)
            raise MappingError(f"{path}: cannot load sentence-transformers model ({exc})") from None
        self.encoder_id = f"sentence-transformers:{path.name}"
        self.dim = int(self.model.get_sentence_embedding_dimension() or 0)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def encoder_kind(encoder) -> str:
    return getattr(encoder, "kind", "clip")


def make_mapping_encoder(spec: str | None, clip_text_encoder, device: str | None = None):
    """``None``/``"clip"``: CLIP's text tower (given); otherwise a sentence-transformers dir."""
    if spec is None or spec.strip().lower() == "clip":
        return clip_text_encoder
    return SentenceTransformerEncoder(spec, device)


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("_", " ").split())


class NameMapper:
    """Cosine between region names and class texts (max over a class's aliases), cached."""

    def __init__(self, encoder, classes: list[EvalClass]) -> None:
        if not classes:
            raise MappingError("the dataset has no classes to map names to")
        self.encoder, self.classes = encoder, classes
        texts = [t for c in classes for t in c.texts]
        self._owner = np.array([i for i, c in enumerate(classes) for _ in c.texts])
        self._exact = {_norm(t): i for i, c in reversed(list(enumerate(classes))) for t in c.texts}
        self._class_vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
        self._cache: dict[str, np.ndarray] = {}

    def similarities(self, names: Sequence[str]) -> np.ndarray:
        """(n, C) cosine of each name with each class (exact text matches get 1.0)."""
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            per_text = np.asarray(self.encoder.encode(missing), dtype=np.float32) @ self._class_vectors.T
            for name, row in zip(missing, per_text):
                sims = np.full(len(self.classes), -np.inf, dtype=np.float32)
                np.maximum.at(sims, self._owner, row)
                exact = self._exact.get(_norm(name))
                if exact is not None:
                    sims[exact] = max(1.0, float(sims.max()) + 1e-6)
                self._cache[name] = sims
        if not names:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.stack([self._cache[n] for n in names])

    def map(self, names: Sequence[str], allowed: Sequence[int], threshold: float | None
            ) -> tuple[np.ndarray, np.ndarray]:
        """(class index or UNMATCHED, cosine) per name among ``allowed`` classes."""
        allowed = np.asarray(list(allowed), dtype=np.int64)
        if not len(names):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        sims = self.similarities(names)[:, allowed]
        best = sims.argmax(1)
        score = sims[np.arange(len(names)), best]
        cls = allowed[best]
        if threshold is not None:
            cls = np.where(score >= threshold, cls, UNMATCHED)
        return cls.astype(np.int64), score.astype(np.float32)
