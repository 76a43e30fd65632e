"""Which webhook payloads can be recorded: checked before ``/webhook`` acknowledges one.

A 201 tells Label Studio the event is taken care of, so a payload the correction worker could
only drop later (an annotation without id, a deletion naming nothing, START_TRAINING without a
project or without Label Studio credentials) is refused at once with 422 and the reason, instead
of being acknowledged and then lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import BackendRequestError
from .protocol import project_id


class UnrecordableWebhook(BackendRequestError):
    """A training event the backend could never record: HTTP 422."""

    status = 422


def _has_id(item: Any) -> bool:
    if not isinstance(item, Mapping):
        return False
    value = item.get("id")
    return isinstance(value, int) and not isinstance(value, bool) or (
        isinstance(value, str) and value.strip() != ""
    )


def unrecordable_reason(payload: Mapping[str, Any], *, can_reingest: bool = True) -> str | None:
    """Why ``payload`` (a training action) can never be recorded; None when it can."""
    action = str(payload.get("action") or "")
    if action == "START_TRAINING":
        pid = project_id(payload.get("project"))
        if not pid or not pid.isdigit():
            return "START_TRAINING payload has no project id (project.id)"
        if not can_reingest:
            return "START_TRAINING needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY on the backend"
        return None
    if action == "ANNOTATIONS_DELETED" or (
        action == "ANNOTATION_DELETED" and "annotations" in payload
    ):
        items = payload.get("annotations")
        if not isinstance(items, list) or not items or not all(_has_id(a) for a in items):
            return f"{action} payload needs an 'annotations' list of objects with an id"
        return None
    annotation = payload.get("annotation")
    items = annotation if isinstance(annotation, list) else [annotation]
    if not items or not all(_has_id(a) for a in items):
        return f"{action} payload has no annotation id: nothing could be recorded"
    return None


def refuse_unrecordable(payload: Mapping[str, Any], *, can_reingest: bool = True) -> None:
    """Raise :class:`UnrecordableWebhook` for a payload :func:`unrecordable_reason` refuses."""
    reason = unrecordable_reason(payload, can_reingest=can_reingest)
    if reason is not None:
        raise UnrecordableWebhook(reason)
