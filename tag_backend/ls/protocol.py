"""Label Studio ML protocol payloads (as Label Studio 1.23 sends them, label_studio/ml/api_connector.py): parsing and response shapes.

Parsing is strict about what the backend needs and lenient about everything else, because
Label Studio versions add fields freely (``extra_params`` may be a dict or a string: ls#3817).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BackendRequestError

#: Above this many tasks a ``/predict`` computes nothing inline: every task not already stored is
#: queued as a background job at once (LS's timeout could not be met anyway).
MAX_TASKS_PER_REQUEST = 10_000
#: Header carrying TAG_WEBHOOK_SECRET on Label Studio's webhooks (read by /webhook, set by ls-connect).
WEBHOOK_SECRET_HEADER = "X-Tag-Webhook-Secret"
TRAIN_ACTIONS = (
    "ANNOTATION_CREATED",
    "ANNOTATION_UPDATED",
    "ANNOTATIONS_CREATED",
    "ANNOTATION_DELETED",
    "ANNOTATIONS_DELETED",
    "START_TRAINING",
)


@dataclass
class PredictRequest:
    """A ``/predict`` call: the tasks, the project's config, the interactive context (if any)."""

    tasks: list[Any]
    label_config: str | None
    project: str | None
    context: Mapping[str, Any] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class SetupRequest:
    """A ``/setup`` call: Label Studio runs it before every prediction batch (3 s timeout)."""

    project: str | None
    schema: str | None
    extra_params: Any = None


def json_body(raw: bytes) -> Mapping[str, Any]:
    """The request body as a JSON object; :class:`BackendRequestError` otherwise."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackendRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, Mapping):
        raise BackendRequestError("request body must be a JSON object")
    return body


def project_id(project: Any) -> str | None:
    """Project id from LS's uid ``"<id>.<created_at>"``, a number or a ``{"id": ...}`` object."""
    if isinstance(project, Mapping):
        project = project.get("id")
    if project is None or project == "":
        return None
    return str(project).split(".", 1)[0]


def parse_predict(body: Mapping[str, Any]) -> PredictRequest:
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise BackendRequestError("/predict needs a 'tasks' list")
    params = body.get("params") if isinstance(body.get("params"), Mapping) else {}
    context = params.get("context") if isinstance(params.get("context"), Mapping) else None
    config = body.get("label_config")
    return PredictRequest(
        tasks=tasks,
        label_config=config if isinstance(config, str) else None,
        project=project_id(body.get("project")),
        context=context,
        params=params,
    )


def parse_setup(body: Mapping[str, Any]) -> SetupRequest:
    schema = body.get("schema")
    return SetupRequest(
        project=project_id(body.get("project")),
        schema=schema if isinstance(schema, str) else None,
        extra_params=body.get("extra_params"),
    )


def error_body(status: int, message: str) -> dict:
    """Error shape of the reference backend (``status`` + ``detail``), without tracebacks."""
    return {"status": status, "detail": message}
