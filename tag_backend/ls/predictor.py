"""Predict one Label Studio task: fetch the image, run TAG, build the result item.

:func:`predict_task` is the unit of work shared by ``/predict`` and the pre-labelling job
engine. It never raises for a bad task: the task gets an empty result and the reason is logged
(Label Studio needs exactly one item per task, in order: ``ml/models.py`` stores nothing otherwise).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import metrics
from ..masks import clean_regions
from ..types import SegmentLabel
from .errors import MediaError
from .guided import LabelSnapper
from .media import MediaFetcher
from .results import PlacedRegion, ResultLayout, prediction_for

logger = logging.getLogger(__name__)

# One engine call at a time per process: torch already uses every core for one image, and
# concurrent calls would only thrash caches while webhooks wait for a thread.
ENGINE_LOCK = threading.Lock()


@dataclass
class PredictContext:
    """Everything shared by the tasks of one request (built once per ``/predict``)."""

    layout: ResultLayout
    model_version: str
    fetcher: MediaFetcher
    snapper: LabelSnapper | None = None
    max_regions: int = 30
    polygon_tolerance: float = 1.5
    timings: dict[str, float] = field(default_factory=dict)


def empty_result(model_version: str) -> dict:
    """The item of a task with nothing to show (failure or no region)."""
    return {"result": [], "score": 0.0, "model_version": model_version}


def task_label(task: Any) -> str:
    return str(task.get("id", "?")) if isinstance(task, Mapping) else "?"


def predict_task(runtime, task: Mapping[str, Any], context: PredictContext) -> dict:
    """The ``/predict`` result item of one task; an empty result (logged) if it fails."""
    start = time.perf_counter()
    try:
        regions, width, height = _run(runtime, task, context)
    except MediaError as exc:
        logger.warning("task %s: image unusable: %s", task_label(task), exc)
        metrics.TASKS_PREDICTED.labels(outcome="image_error").inc()
        return empty_result(context.model_version)
    except Exception:
        logger.exception("task %s: prediction failed", task_label(task))
        metrics.TASKS_PREDICTED.labels(outcome="error").inc()
        return empty_result(context.model_version)
    item = prediction_for(regions, width, height, context.model_version, context.layout,
                          polygon_tolerance=context.polygon_tolerance)
    metrics.TASKS_PREDICTED.labels(outcome="ok" if regions else "empty").inc()
    logger.info(
        "task %s: %d regions in %.2f s", task_label(task), len(regions), time.perf_counter() - start
    )
    return item


def _run(
    runtime, task: Mapping[str, Any], context: PredictContext
) -> tuple[list[PlacedRegion], int, int]:
    if not isinstance(task, Mapping):
        raise MediaError("task is not a JSON object")
    data = task.get("data")
    field_name = context.layout.image_field
    if not isinstance(data, Mapping) or not data.get(field_name):
        raise MediaError(f"task has no {field_name!r} field in its data")
    url = data[field_name]
    if not isinstance(url, str):
        raise MediaError(f"task data {field_name!r} is not a URL string")
    fetched = context.fetcher.fetch(url, task_id=task.get("id"))
    width, height = fetched.image.size
    timings: dict[str, float] = {}
    with ENGINE_LOCK:
        regions = runtime.pipeline.generate_batch([fetched.image], timings)[0]
    metrics.observe_timings(timings)
    for stage, seconds in timings.items():
        context.timings[stage] = context.timings.get(stage, 0.0) + seconds
    return place(regions, context), width, height


def place(regions: list[SegmentLabel], context: PredictContext) -> list[PlacedRegion]:
    """Clean masks, cap their number, and choose labels (guided snapping or the fixed label)."""
    kept = clean_regions([r.mask for r in regions], context.max_regions)
    layout = context.layout
    names = [regions[i].name for i, _ in kept]
    if layout.guided_labels and context.snapper is not None:
        labels = [s.label for s in context.snapper.snap(names, layout.guided_labels)]
    elif layout.text_name:
        labels = [layout.label] * len(kept)
    else:
        labels = names  # no TextArea, no static labels: the name is the label (dynamic config)
    placed = []
    for (i, mask), name, label in zip(kept, names, labels):
        if label is None:
            logger.debug("guided mode: %r matches no project label: region dropped", name)
            continue
        placed.append(
            PlacedRegion(mask=mask, name=name, label=label, score=float(regions[i].score))
        )
    return placed
