"""Per-image predictions for the evaluator, cached on disk so an interrupted run resumes.

A prediction is stored as a region map (region index per pixel) + the region names: the
name->class mapping and every metric are recomputed from it, so changing the mapping encoder
or threshold never recomputes the pipeline. Cache files live in
``<report>/cache/<config hash>/<image id>.npz``; the hash covers the model version (engine,
preset, encoder, concept-database version) and every pipeline knob that changes the output.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import region_map_from_masks

logger = logging.getLogger(__name__)

@dataclass
class Prediction:
    """region_map: (H, W) int32, -1 = no region; names/scores/origins: one per region."""

    region_map: np.ndarray
    names: list[str]
    scores: list[float] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def n_regions(self) -> int:
        return len(self.names)


def prediction_from_regions(regions, shape: tuple[int, int], seconds: float = 0.0) -> Prediction:
    """From the pipeline's ``SegmentLabel`` list."""
    return Prediction(
        region_map=region_map_from_masks([r.mask for r in regions], shape),
        names=[r.name for r in regions], scores=[float(r.score) for r in regions],
        origins=[r.origin for r in regions], seconds=seconds,
    )


def config_hash(services, extra: dict) -> str:
    """Stable short hash of everything that changes predictions (``services``: the
    :class:`tag_backend.services.Services` that predicts)."""
    services.pipeline()  # loads the knowledge whose version is part of the hash
    knowledge = services.loaded_knowledge()
    payload = {"model_version": services.model_version(),
               "knowledge": knowledge.db_version if knowledge is not None else None,
               "encoder": services.models.clip.encoder_id,
               "settings": services.output_fingerprint, **extra}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _safe(image_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)
    return f"{safe}-{hashlib.sha1(image_id.encode()).hexdigest()[:8]}" if safe != image_id else safe


class PredictionCache:
    """npz files under ``directory`` (None: no caching)."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.hits = 0

    def _path(self, image_id: str) -> Path:
        return self.directory / f"{_safe(image_id)}.npz"

    def get(self, image_id: str, shape: tuple[int, int]) -> Prediction | None:
        if self.directory is None or not self._path(image_id).exists():
            return None
        try:
            with np.load(self._path(image_id), allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                region_map = data["region_map"].astype(np.int32)
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("ignoring unreadable cache entry %s (%s)", self._path(image_id), exc)
            return None
        if region_map.shape != tuple(shape):
            return None
        self.hits += 1
        return Prediction(region_map, meta["names"], meta["scores"], meta["origins"], meta["seconds"])

    def put(self, image_id: str, prediction: Prediction) -> None:
        if self.directory is None:
            return
        meta = json.dumps({"names": prediction.names, "scores": prediction.scores,
                           "origins": prediction.origins, "seconds": prediction.seconds})
        dtype = np.int16 if prediction.n_regions < 32_000 else np.int32
        path = self._path(image_id)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, region_map=prediction.region_map.astype(dtype), meta=np.array(meta))
        os.replace(tmp, path)
