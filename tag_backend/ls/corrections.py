"""The correction loop's worker: spooled webhook payloads -> concept database -> live knowledge.

For every annotation event the worker records each region's final name against the concept
it was predicted as (``database_tools.corrections.record_annotation``), with a candidate visual
exemplar for each renamed or hand-drawn region (the region's CLIP embedding), and refreshes the
services' knowledge incrementally (delta index, exemplar index), so the next ``/predict`` uses the
correction. The base index is never rewritten here, and ``model_version`` only changes when a
knowledge release is cut: by ``START_TRAINING`` (which re-ingests every annotated task of the
project through the SDK on a training thread of its own, so corrections keep flowing
meanwhile), ``tag-db release`` or ``TAG_RELEASE_POLICY`` (docs/learning.md). Database outages
are retried with back-off; nothing is dropped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from .. import metrics
from .controls import parse_label_config
from .errors import LabelConfigError, MediaError
from .media import MediaFetcher
from .protocol import project_id
from .webhook_queue import SpoolItem, WebhookSpool

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY = 300.0
#: START_TRAINING runs waiting for the training thread; more are deferred (kept in the spool).
MAX_TRAINING_BACKLOG = 4


def learning_for(settings):
    """How the correction loop learns (exemplar limits, placeholder label) from ``settings``."""
    from database_tools.corrections import Learning
    from database_tools.exemplar_index import ExemplarLimits

    from .layout import DEFAULT_LAYOUT

    return Learning(ExemplarLimits(settings.exemplars_per_concept, settings.exemplars_total),
                    (DEFAULT_LAYOUT.label,))


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: the database or Label Studio unreachable, disk hiccups."""
    try:
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:  # pragma: no cover
        DBAPIError = OperationalError = ()  # type: ignore[assignment]
    try:
        from database_tools.errors import StoreUnavailable
    except ImportError:  # pragma: no cover
        StoreUnavailable = ()  # type: ignore[assignment]
    import requests

    transient = (
        StoreUnavailable,
        OperationalError,
        DBAPIError,
        OSError,
        TimeoutError,
        requests.ConnectionError,
        requests.Timeout,
    )
    return isinstance(exc, transient)


class RegionEmbedder:
    """``embed_region(result item) -> embedding | None`` for one task's image (fetched once)."""

    def __init__(
        self, predictor, encoder_id: str, fetcher: MediaFetcher, task: Mapping[str, Any] | None,
        image_field: str,
    ) -> None:
        self.predictor, self.fetcher, self.task, self.image_field = (
            predictor,
            fetcher,
            task,
            image_field,
        )
        self.encoder_id = encoder_id
        self._image: Image.Image | None = None
        self._failed = False

    def _load(self) -> Image.Image | None:
        if self._image is None and not self._failed:
            data = (self.task or {}).get("data") or {}
            # Only the field the labeling config names: guessing from other strings could fetch
            # any URL-looking text of the task (and learn from the wrong image).
            url = data.get(self.image_field) if isinstance(data, Mapping) else None
            try:
                if not isinstance(url, str) or not url:
                    raise MediaError(f"the task has no {self.image_field!r} image field")
                self._image = self.fetcher.fetch(url, task_id=(self.task or {}).get("id")).image
            except MediaError as exc:
                self._failed = True
                logger.warning(
                    "task %s: no exemplars (image unavailable: %s)",
                    (self.task or {}).get("id"),
                    exc,
                )
        return self._image

    def __call__(self, item: Mapping[str, Any]) -> np.ndarray | None:
        value = item.get("value") or {}
        rle = value.get("rle")
        if not rle:
            return None  # polygons etc.: no exemplar from this region
        image = self._load()
        if image is None:
            return None
        mask = decode_mask(rle, item.get("original_width"), item.get("original_height"), image.size)
        if mask is None or not mask.any():
            return None
        return self.predictor.embed_regions(image, [mask])[0]


def region_embedder(services, task: Mapping[str, Any] | None, image_field: str) -> RegionEmbedder:
    """A :class:`RegionEmbedder` for one task, on the services' predictor and fetcher."""
    return RegionEmbedder(services.predictor, services.models.clip.encoder_id, services.fetcher,
                          task, image_field)


def decode_mask(
    rle: list[int], width: Any, height: Any, image_size: tuple[int, int]
) -> np.ndarray | None:
    """Boolean (H, W) mask of a brush RLE, resized to the image if LS stored another size."""
    from label_studio_sdk.converter.brush import decode_rle

    w, h = (int(width), int(height)) if width and height else image_size
    flat = decode_rle(rle)
    if flat.size != w * h * 4:
        logger.warning(
            "brush RLE holds %d values, expected %dx%dx4: region skipped", flat.size, w, h
        )
        return None
    mask = flat.reshape(h, w, 4)[:, :, 3] > 127
    if (w, h) != tuple(image_size):
        mask = np.asarray(Image.fromarray(mask).resize(image_size, Image.NEAREST))
    return mask


def image_field_for(payload: Mapping[str, Any]) -> str:
    """The task data key holding the image, from the project's config when the payload has it."""
    project = payload.get("project")
    config = project.get("label_config") if isinstance(project, Mapping) else None
    if config:
        try:
            return parse_label_config(config).image_field
        except LabelConfigError:
            pass
    return "image"


def split_bulk(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """One singular-shaped payload per annotation.

    Label Studio 1.23 sends ``ANNOTATIONS_CREATED`` with ``annotation`` and ``task`` as **lists**
    (``webhooks/models.py``: key ``annotation``, ``many=True``, nested ``task`` many); each
    annotation is paired with its task by id so exemplars can fetch the right image.
    """
    anns = payload.get("annotation")
    if not isinstance(anns, list):
        return [payload]
    tasks = payload.get("task") if isinstance(payload.get("task"), list) else []
    by_id = {str(t.get("id")): t for t in tasks if isinstance(t, Mapping)}
    out = []
    for ann in anns:
        if not isinstance(ann, Mapping):
            continue
        task_ref = ann.get("task")
        task_id = str(task_ref.get("id") if isinstance(task_ref, Mapping) else task_ref)
        out.append({**payload, "annotation": ann, "task": by_id.get(task_id)})
    return out


class CorrectionWorker:
    """Background thread draining the spool; one per process."""

    def __init__(
        self,
        services,
        spool: WebhookSpool,
        *,
        reingest=None,
        poll_seconds: float = 1.0,
    ) -> None:
        self.services, self.spool = services, spool
        self.reingest = reingest
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._training: ThreadPoolExecutor | None = None
        self._training_projects: set[str] = set()
        self._training_lock = threading.Lock()
        self.processed = 0

    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self.spool.recover()
        self._thread = threading.Thread(target=self._loop, name="tag-corrections", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._training is not None:
            self._training.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                worked = self.run_once()
            except Exception:  # never let the thread die
                logger.exception("correction worker error")
                worked = False
            if not worked:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def run_once(self) -> bool:
        """Process one due payload; False when none was due."""
        item = self.spool.claim()
        metrics.QUEUE_DEPTH.labels(queue="webhook").set(self.spool.depth())
        if item is None:
            return False
        if str(item.payload.get("action") or "") == "START_TRAINING" and self.reingest is not None:
            self._start_training(item)
            return True
        self._process(item)
        return True

    def _process(self, item: SpoolItem) -> None:
        try:
            outcome = self.handle(item.payload)
        except Exception as exc:
            self._failed(item, exc)
            return
        self.spool.done(item)
        self.processed += 1
        metrics.CORRECTIONS_INGESTED.labels(outcome=outcome).inc()

    def _start_training(self, item: SpoolItem) -> None:
        """Hand a START_TRAINING item to the training thread (one run per project at a time)."""
        project = str(project_id(item.payload.get("project")) or "")
        with self._training_lock:
            if project in self._training_projects or (
                len(self._training_projects) >= MAX_TRAINING_BACKLOG
            ):
                busy = project in self._training_projects
                logger.info(
                    "START_TRAINING project %s deferred (%s)",
                    project or "?",
                    "a run for it is in progress" if busy else "training backlog full",
                )
                self.spool.retry(item, 30.0)  # kept: runs after the current one
                return
            self._training_projects.add(project)
            if self._training is None:
                self._training = ThreadPoolExecutor(1, thread_name_prefix="tag-training")
        self._training.submit(self._train, item, project)

    def _train(self, item: SpoolItem, project: str) -> None:
        try:
            self._process(item)
        except Exception:  # never let the training thread die silently
            logger.exception("START_TRAINING project %s failed", project or "?")
        finally:
            with self._training_lock:
                self._training_projects.discard(project)

    def _failed(self, item: SpoolItem, exc: Exception) -> None:
        if is_transient(exc):
            delay = min(MAX_RETRY_DELAY, 2.0 ** min(item.attempts, 8))
            logger.warning(
                "correction deferred (%s: %s); retry %d in %.0f s",
                type(exc).__name__,
                str(exc).splitlines()[0][:200],
                item.attempts + 1,
                delay,
            )
            metrics.CORRECTIONS_INGESTED.labels(outcome="retry").inc()
            self.spool.retry(item, delay)
        else:
            logger.exception("correction payload rejected")
            metrics.CORRECTIONS_INGESTED.labels(outcome="failed").inc()
            self.spool.fail(item, f"{type(exc).__name__}: {exc}")

    def handle(self, payload: Mapping[str, Any]) -> str:
        """Apply one payload; returns the outcome label. Raises on failure (see _failed)."""
        from database_tools.releases import ReleasePolicy, apply_policy, cut_release

        action = str(payload.get("action") or "")
        if action == "START_TRAINING":
            if self.reingest is None:
                raise ValueError("START_TRAINING needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
            report = self.reingest(payload)
        else:
            report = self._record(payload)
        logger.info("%s: %s", action or "annotation", report.summary())
        changed = bool(report.recorded or report.deleted or report.replaced)
        store, released = self.services.store, False
        if action == "START_TRAINING":
            release, released = cut_release(store, note="Label Studio Start Training",
                                            source="label-studio")
            logger.info("START_TRAINING: knowledge release %s%s", release.label,
                        "" if released else " (nothing new since it)")
        elif changed:
            policy = ReleasePolicy.parse(self.services.settings.release_policy)
            release = apply_policy(store, policy)
            released = release is not None
            if released:
                logger.info("release policy cut knowledge release %s", release.label)
        if changed or released:
            self.learn()
        return "recorded" if changed else "unchanged"

    def _record(self, payload: Mapping[str, Any]):
        from database_tools.corrections import CorrectionReport, record_annotation

        report = CorrectionReport()
        field = image_field_for(payload)
        for single in split_bulk(payload):
            task = single.get("task") if isinstance(single.get("task"), Mapping) else None
            embedder = region_embedder(self.services, task, field)
            report.merge(
                record_annotation(
                    self.services.store,
                    single,
                    embed_region=embedder,
                    new_concept_status=self.services.settings.new_concept_status,
                    learning=learning_for(self.services.settings),
                )
            )
        return report

    def learn(self) -> None:
        """Load what the store learnt into this process (delta index, exemplars, aliases).

        Incremental: the base index is never rewritten on this path (``tag-db compact`` folds
        the delta into a new base off the request path)."""
        services = self.services
        services.refresh()
        metrics.DB_VERSION.set(services.store.db_version())
