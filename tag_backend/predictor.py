"""The one engine-level predictor: decoded images -> named regions.

Every caller that turns images into regions goes through :class:`Predictor` — ``/predict``, the
job worker, ``tag-backend predict`` and the evaluator — so they share:

* **one engine lock**: torch already uses every core for one batch; concurrent engine calls
  would only thrash caches while webhooks wait for a thread;
* **batching**: several images go through the backbones in one call (the pipeline stacks
  images whose input sizes agree);
* **a bounded feature cache** (:mod:`.feature_cache`): a second call on the same image
  (same pixels, models and feature knobs) skips the backbone forwards and reruns only the
  stages after them, with the knowledge snapshot of that call.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from . import metrics
from .feature_cache import FeatureCache, image_digest
from .knowledge import Knowledge
from .pipeline import TagPipeline
from .types import ImageFeatures, SegmentLabel

logger = logging.getLogger(__name__)


class EngineSource(Protocol):
    """Where the predictor gets the pipeline and the current knowledge (the services)."""

    def pipeline(self) -> TagPipeline: ...

    def knowledge(self) -> Knowledge: ...


class Predictor:
    """Images -> ``list[SegmentLabel]`` per image, under one lock, with a feature cache."""

    def __init__(self, source: EngineSource, cache: FeatureCache) -> None:
        self._source = source
        self.cache = cache
        self.lock = threading.Lock()

    def feature_key(self, image: Image.Image) -> str:
        """Cache key: image content + models + the knobs that change the features."""
        return image_digest(image) + ":" + self._source.pipeline().feature_signature()

    def predict(self, images: Sequence[Image.Image], *, knowledge: Knowledge | None = None,
                timings: dict[str, float] | None = None) -> list[list[SegmentLabel]]:
        """Named regions of each decoded RGB image, in order (one batched engine call).

        ``knowledge``: the snapshot to name with (default: the current one), so a caller can
        tag the result with the version of exactly what named it.
        """
        images = list(images)
        if not images:
            return []
        pipeline = self._source.pipeline()
        knowledge = knowledge or self._source.knowledge()
        keys = [self.feature_key(image) for image in images]
        stage_times: dict[str, float] = {}
        out: list[list[SegmentLabel] | None] = [None] * len(images)
        with self.lock:
            kept = {i: f for i, f in ((i, self.cache.get(k)) for i, k in enumerate(keys))
                    if f is not None}
            if kept:
                found = pipeline.regions_from_features(list(kept.values()), stage_times,
                                                       knowledge=knowledge)
                for i, regions in zip(kept, found):
                    out[i] = regions
            todo = [i for i in range(len(images)) if i not in kept]
            if todo:
                computed = pipeline.generate_with_features([images[i] for i in todo],
                                                           stage_times, knowledge=knowledge)
                for i, (features, regions) in zip(todo, computed):
                    self.cache.put(keys[i], features)
                    out[i] = regions
        metrics.observe_timings(stage_times)
        if timings is not None:
            for stage, seconds in stage_times.items():
                timings[stage] = timings.get(stage, 0.0) + seconds
        return [regions if regions is not None else [] for regions in out]

    def features(self, image: Image.Image) -> ImageFeatures:
        """The backbone features of one image (from the cache, or computed and kept)."""
        key = self.feature_key(image)
        with self.lock:
            found = self.cache.get(key)
            if found is None:
                found = self._source.pipeline().features([image])[0]
                self.cache.put(key, found)
        return found

    def regions_from_features(self, features: ImageFeatures, *,
                              knowledge: Knowledge | None = None) -> list[SegmentLabel]:
        """Named regions of kept features: the stages after the backbones only."""
        pipeline = self._source.pipeline()
        knowledge = knowledge or self._source.knowledge()
        with self.lock:
            return pipeline.regions_from_features([features], knowledge=knowledge)[0]

    def embed_regions(self, image: Image.Image, masks: list[np.ndarray]) -> np.ndarray:
        """(n, D) CLIP embeddings of boolean masks of ``image`` (for corrections' exemplars);
        reuses the image's kept features when it was predicted recently."""
        pipeline = self._source.pipeline()
        kept = self.cache.get(self.feature_key(image))
        with self.lock:
            return pipeline.embed_regions(image, masks, features=kept)
