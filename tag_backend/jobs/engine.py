"""The unit of work of a job: fetch a task's image, run TAG on a batch, build the LS item.

Split so the worker can overlap the parts: :meth:`TaskEngine.fetch` (network + decoding, in a
prefetch thread), :meth:`TaskEngine.run` (the models, one batch at a time, under the
process-wide engine lock shared with ``/predict``) and :meth:`TaskEngine.item` (masks, brush RLE;
in the finishing thread). Failures raise instead of returning an
empty result, so the queue can count, report and retry them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .. import metrics
from ..ls.controls import parse_label_config
from ..ls.errors import MediaError
from ..ls.media import MediaFetcher
from ..ls.predictor import ENGINE_LOCK, PredictContext, place
from ..ls.results import ResultLayout, prediction_for
from ..types import SegmentLabel

logger = logging.getLogger(__name__)


class TaskInputError(MediaError):
    """The task itself is unusable (no image field...): retrying cannot help."""


@dataclass
class FetchedTask:
    """A decoded image ready for the engine (or the reason it could not be fetched)."""

    image: Image.Image | None
    error: str = ""
    retry: bool = True
    seconds: float = 0.0


def cache_key(model_version: str, label_config: str, task: Mapping[str, Any]) -> str:
    """Key of one task's prediction: model_version + labeling config + task id + task data."""
    digest = hashlib.sha256()
    config_hash = hashlib.sha256((label_config or "").encode()).hexdigest()
    payload = [str(model_version), config_hash, task.get("id"), task.get("data")]
    digest.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class TaskEngine:
    """Fetch + batched TAG + Label Studio items, for one runtime and settings."""

    def __init__(self, runtime, fetcher: MediaFetcher | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.fetcher = fetcher or MediaFetcher(runtime.settings)
        self._snapper = None

    def layout(self, label_config: str) -> ResultLayout:
        return parse_label_config(label_config)

    @staticmethod
    def check_config(label_config: str) -> ResultLayout:
        """The layout of a project's config; LabelConfigError if TAG cannot fill it."""
        return parse_label_config(label_config)

    def fetch(self, task: Mapping[str, Any], layout: ResultLayout) -> FetchedTask:
        """Download and decode the task's image; never raises (the reason is returned)."""
        start = time.perf_counter()
        data = task.get("data") if isinstance(task, Mapping) else None
        url = data.get(layout.image_field) if isinstance(data, Mapping) else None
        if not isinstance(url, str) or not url:
            return FetchedTask(None, f"task has no {layout.image_field!r} image URL", retry=False)
        try:
            image = self.fetcher.fetch(url, task_id=task.get("id")).image
        except MediaError as exc:
            return FetchedTask(None, str(exc), retry=True,
                               seconds=time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 - a bad task must never stop the worker
            return FetchedTask(None, f"{type(exc).__name__}: {exc}", retry=True,
                               seconds=time.perf_counter() - start)
        seconds = time.perf_counter() - start
        metrics.STAGE_SECONDS.labels(stage="fetch").observe(seconds)
        return FetchedTask(image, seconds=seconds)

    def context(self, layout: ResultLayout, model_version: str) -> PredictContext:
        snapper = None
        if layout.guided_labels:
            snapper = self._guided_snapper()
        return PredictContext(layout=layout, model_version=model_version, fetcher=self.fetcher,
                              snapper=snapper, max_regions=self.settings.max_regions,
                              polygon_tolerance=self.settings.polygon_tolerance)

    def _guided_snapper(self):
        from ..ls.guided import LabelSnapper

        if self._snapper is None:
            self._snapper = LabelSnapper(self.runtime.text_encoder.encode,
                                         self.settings.guided_threshold,
                                         self.settings.guided_fallback)
        return self._snapper

    def run(self, images: Sequence[Image.Image]) -> list[list[SegmentLabel]]:
        """TAG regions of decoded images: one batched engine call (shared engine lock)."""
        timings: dict[str, float] = {}
        with ENGINE_LOCK:
            batches = self.runtime.pipeline.generate_batch(list(images), timings)
        metrics.observe_timings(timings)
        return batches

    def item(self, image: Image.Image, regions: list[SegmentLabel], layout: ResultLayout,
             model_version: str) -> dict:
        """The Label Studio item of one image: cleaned masks, labels, brush RLE."""
        start = time.perf_counter()
        context = self.context(layout, model_version)
        placed = place(regions, context)
        width, height = image.size
        item = prediction_for(placed, width, height, model_version, layout,
                              polygon_tolerance=context.polygon_tolerance)
        metrics.STAGE_SECONDS.labels(stage="results").observe(time.perf_counter() - start)
        return item
