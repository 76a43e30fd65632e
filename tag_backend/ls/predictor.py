"""Label Studio tasks -> prediction items: fetch the image, the one Predictor, the one Serializer.

:class:`TaskPredictor` is shared by ``/predict`` and the pre-labelling job worker. It is split
so the worker can overlap the parts: :meth:`~TaskPredictor.fetch` (network + decoding, in a
prefetch thread), :meth:`~TaskPredictor.regions` (the engine, one batch at a time) and
:meth:`~TaskPredictor.item` (masks, brush RLE; in the finishing thread).
:meth:`~TaskPredictor.predict` chains them for one task and never raises: a bad task gets an
empty item and the reason is logged (Label Studio needs exactly one item per task, in order).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .. import metrics
from ..errors import ImageError
from ..knowledge import Knowledge
from ..predictor import Predictor
from ..types import SegmentLabel
from .errors import MediaError
from .layout import ResultLayout
from .media import MediaFetcher
from .serializer import Serializer, empty_item
from .served import ServedRecorder

logger = logging.getLogger(__name__)


@dataclass
class FetchedTask:
    """A decoded task image ready for the engine, or why it could not be had.

    retry: False when the task itself is unusable (no image URL): retrying cannot help.
    transient: the image is only unavailable for now (timeout, HTTP 5xx...): no prediction
    should be given for it, not even an empty one.
    """

    image: Image.Image | None
    error: str = ""
    retry: bool = True
    seconds: float = 0.0
    transient: bool = False


def task_label(task: Any) -> str:
    return str(task.get("id", "?")) if isinstance(task, Mapping) else "?"


class TaskPredictor:
    """Fetch + :class:`~tag_backend.predictor.Predictor` + :class:`.Serializer` for LS tasks."""

    def __init__(self, fetcher: MediaFetcher, predictor: Predictor, serializer: Serializer,
                 recorder: ServedRecorder | None = None) -> None:
        self.fetcher, self.predictor, self.serializer = fetcher, predictor, serializer
        self.recorder = recorder

    def fetch(self, task: Any, layout: ResultLayout) -> FetchedTask:
        """Download and decode the task's image; never raises (the reason is returned)."""
        start = time.perf_counter()
        data = task.get("data") if isinstance(task, Mapping) else None
        url = data.get(layout.image_field) if isinstance(data, Mapping) else None
        if not isinstance(url, str) or not url:
            return FetchedTask(None, f"task has no {layout.image_field!r} image URL in its data",
                               retry=False)
        try:
            image = self.fetcher.fetch(url, task_id=task.get("id")).image
        except MediaError as exc:
            return FetchedTask(None, str(exc), seconds=time.perf_counter() - start,
                               transient=exc.transient)
        except Exception as exc:  # noqa: BLE001 - a bad task must never stop its caller
            return FetchedTask(None, f"{type(exc).__name__}: {exc}",
                               seconds=time.perf_counter() - start)
        seconds = time.perf_counter() - start
        metrics.STAGE_SECONDS.labels(stage="fetch").observe(seconds)
        return FetchedTask(image, seconds=seconds)

    def regions(self, images: Sequence[Image.Image], knowledge: Knowledge | None = None
                ) -> list[list[SegmentLabel]]:
        """TAG regions of decoded images: one batched call of the shared predictor."""
        return self.predictor.predict(images, knowledge=knowledge)

    def item(self, image: Image.Image, regions: list[SegmentLabel], layout: ResultLayout,
             model_version: str, *, task: Any = None, knowledge: Knowledge | None = None) -> dict:
        """The Label Studio item of one image (cleaned masks, labels, brush RLE); with ``task``,
        recorded with its region concept ids and ``knowledge``'s sequence number."""
        start = time.perf_counter()
        width, height = image.size
        item, placed = self.serializer.placed_item(regions, width, height, layout, model_version)
        if task is not None and self.recorder is not None:
            self.recorder(task, placed, model_version, knowledge)
        metrics.STAGE_SECONDS.labels(stage="results").observe(time.perf_counter() - start)
        return item

    def predict(self, task: Any, layout: ResultLayout, model_version: str,
                knowledge: Knowledge | None = None) -> dict | list:
        """The ``/predict`` item of one task; an empty item (logged) if anything fails, and
        ``[]`` (no prediction) if its image is only unavailable for now."""
        start = time.perf_counter()
        fetched = self.fetch(task, layout)
        if fetched.image is None and fetched.transient:
            # An empty prediction would be stored by Label Studio with this model_version, which
            # then skips the task on every later "Retrieve Predictions". An empty *list* keeps
            # the reply aligned (one item per task) and stores nothing: the next retrieval retries.
            logger.warning("task %s: image unavailable for now, no prediction: %s",
                           task_label(task), fetched.error)
            metrics.TASKS_PREDICTED.labels(outcome="image_unavailable").inc()
            return []
        if fetched.image is None:
            logger.warning("task %s: image unusable: %s", task_label(task), fetched.error)
            metrics.TASKS_PREDICTED.labels(outcome="image_error").inc()
            return empty_item(model_version)
        try:
            regions = self.regions([fetched.image], knowledge)[0]
            item = self.item(fetched.image, regions, layout, model_version, task=task,
                             knowledge=knowledge)
        except ImageError as exc:  # e.g. smaller than one model patch: one line, no traceback
            logger.warning("task %s: image unusable: %s", task_label(task), exc)
            metrics.TASKS_PREDICTED.labels(outcome="image_error").inc()
            return empty_item(model_version)
        except Exception:  # noqa: BLE001 - one bad task never fails the others
            logger.exception("task %s: prediction failed", task_label(task))
            metrics.TASKS_PREDICTED.labels(outcome="error").inc()
            return empty_item(model_version)
        metrics.TASKS_PREDICTED.labels(outcome="ok" if item["result"] else "empty").inc()
        logger.info("task %s: %d result items in %.2f s", task_label(task), len(item["result"]),
                    time.perf_counter() - start)
        return item
