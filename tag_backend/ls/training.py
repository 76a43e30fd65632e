"""START_TRAINING: re-ingest every annotated task of a project through the SDK.

The "Start Training" button posts ``{"action": "START_TRAINING", "project": {...}}`` with no
``annotation`` key (Label Studio's ``MLApi.train``; mlb#874): the project id is read from ``project.id``.
Recording is idempotent, so re-ingesting already known annotations adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .errors import BackendRequestError
from .media import MediaFetcher
from .protocol import project_id

logger = logging.getLogger(__name__)


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    return dump() if dump else dict(obj)


def make_reingest(runtime, fetcher: MediaFetcher):
    """A ``reingest(payload) -> CorrectionReport`` for the correction worker, or None when the
    backend has no Label Studio credentials."""
    settings = runtime.settings
    if not settings.label_studio_url or not settings.label_studio_api_key:
        return None

    def reingest(payload: Mapping[str, Any]):
        from database_tools.corrections import CorrectionReport, record_annotation
        from label_studio_sdk import LabelStudio

        from .corrections import RegionEmbedder, image_field_for

        pid = project_id(payload.get("project"))
        if not pid or not pid.isdigit():
            raise BackendRequestError("START_TRAINING payload has no project id")
        client = LabelStudio(
            base_url=settings.label_studio_url.rstrip("/"), api_key=settings.label_studio_api_key
        )
        field = image_field_for(payload)
        report = CorrectionReport()
        for task in client.tasks.list(project=int(pid), fields="all", only_annotated=True):
            task = _as_dict(task)
            anns = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
            if not anns:
                continue
            embedder = RegionEmbedder(runtime, fetcher, task, field)
            report.merge(
                record_annotation(
                    runtime.store,
                    {**task, "project": pid, "annotations": anns},
                    embed_region=embedder,
                    new_concept_status=settings.new_concept_status,
                )
            )
        logger.info("START_TRAINING project %s: %s", pid, report.summary())
        return report

    return reingest
