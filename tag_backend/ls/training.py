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
from .protocol import project_id

logger = logging.getLogger(__name__)


def _as_dict(obj: Any) -> dict:
    if isinstance(obj, Mapping):
        return dict(obj)
    dump = getattr(obj, "model_dump", None) or getattr(obj, "dict", None)
    return dump() if dump else dict(obj)


def make_reingest(services):
    """A ``reingest(payload) -> CorrectionReport`` for the correction worker, or None when the
    backend has no Label Studio credentials (``services``: :class:`tag_backend.services.Services`)."""
    settings = services.settings
    if not services.label_studio.configured:
        return None

    def reingest(payload: Mapping[str, Any]):
        from database_tools.corrections import CorrectionReport, record_annotation

        from .corrections import image_field_for, learning_for, region_embedder

        pid = project_id(payload.get("project"))
        if not pid or not pid.isdigit():
            raise BackendRequestError("START_TRAINING payload has no project id")
        client = services.label_studio.sdk()
        field = image_field_for(payload)
        report = CorrectionReport()
        for task in client.tasks.list(project=int(pid), fields="all", only_annotated=True):
            task = _as_dict(task)
            anns = [a for a in task.get("annotations") or [] if isinstance(a, Mapping)]
            if not anns:
                continue
            embedder = region_embedder(services, task, field)
            report.merge(
                record_annotation(
                    services.store,
                    {**task, "project": pid, "annotations": anns},
                    embed_region=embedder,
                    new_concept_status=settings.new_concept_status,
                    learning=learning_for(settings),
                )
            )
        logger.info("START_TRAINING project %s: %s", pid, report.summary())
        return report

    return reingest
