"""Push finished predictions to Label Studio with label-studio-sdk, classifying failures.

Batches go through ``projects.import_predictions(id=project, request=[...])`` (one request for
up to :data:`PUSH_BATCH` predictions; Label Studio validates every task id before creating
anything, so a refused batch created nothing); a refused batch, a retry and a task without a
known project fall back to ``predictions.create(task=, result=, score=, model_version=)`` one
task at a time, so one deleted task never blocks the others. Outcomes drive the queue: ``pushed``; ``gone`` (404: task or project deleted — recorded, never
retried); ``retry`` (Label Studio unreachable or 5xx/429 — the result stays stored and is pushed
later with back-off); ``failed`` (400: Label Studio refuses the result — recorded); ``auth``
(401/403 — the token lacks permission: retried later, and the CLI stops with a clear message).

A push interrupted between Label Studio's answer and our bookkeeping (a kill) is retried; the
retry first compares the item with the task's newest prediction of the same ``model_version``
(:meth:`LabelStudioPusher.shows`: same regions and names), so no task gets two identical
predictions, and a refresh that replaces a prediction of the same version is still pushed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import metrics
from ..ls.client import LabelStudioAccessError, LabelStudioClient

logger = logging.getLogger(__name__)

PUSHED, GONE, RETRY, FAILED, AUTH = "pushed", "gone", "retry", "failed", "auth"

__all__ = ["AUTH", "FAILED", "GONE", "PUSH_BATCH", "PUSHED", "RETRY", "LabelStudioAccessError",
           "LabelStudioPusher", "PushResult", "classify"]

#: Predictions per ``import_predictions`` request: brush RLE makes one prediction tens of KB,
#: so a few hundred keep a request to a few MB while 1,000 tasks need only a handful of requests.
PUSH_BATCH = 250


@dataclass(frozen=True)
class PushResult:
    outcome: str
    detail: str = ""


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return int(status) if isinstance(status, int) else None


def classify(exc: BaseException) -> PushResult:
    """Map an SDK/HTTP exception to a push outcome."""
    status = _status_of(exc)
    body = str(getattr(exc, "body", "") or "")[:300]
    if status == 404:
        return PushResult(GONE, "task or project not found in Label Studio (deleted?)")
    if status in (401, 403):
        return PushResult(AUTH, f"Label Studio refused the token (HTTP {status}): "
                                "LABEL_STUDIO_API_KEY needs access to this project")
    if status is not None and (status >= 500 or status in (408, 409, 429)):
        return PushResult(RETRY, f"Label Studio answered HTTP {status}")
    if status is not None:
        return PushResult(FAILED, f"Label Studio refused the prediction (HTTP {status}): {body}")
    return PushResult(RETRY, f"Label Studio unreachable: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")


class LabelStudioPusher:
    """Creates predictions through the backend's :class:`~tag_backend.ls.client.LabelStudioClient`."""

    def __init__(self, url: str | None = None, api_key: str | None = None, timeout: float = 30.0,
                 *, client: LabelStudioClient | None = None) -> None:
        self.ls = client or LabelStudioClient(url, api_key, timeout)
        self._lock = threading.Lock()
        #: HTTP requests sent to Label Studio by this pusher (planning and pushes), for reports.
        self.requests = 0

    @classmethod
    def from_settings(cls, settings) -> "LabelStudioPusher":
        return cls(client=LabelStudioClient.from_settings(settings))

    @property
    def configured(self) -> bool:
        return self.ls.configured

    def client(self):
        """The SDK client (a PAT is exchanged for an access token by the SDK itself)."""
        return self.ls.sdk()

    def reset(self) -> None:
        """Drop the client (e.g. after an auth failure, so a new token exchange happens)."""
        self.ls.reset()

    def count_request(self, n: int = 1) -> None:
        with self._lock:
            self.requests += n

    def shows(self, ls_task_id: int, item: Mapping[str, Any]) -> bool:
        """Whether the task's newest prediction of the item's ``model_version`` already shows
        the item's regions and names (pushing it would only add a copy). False when it has no
        such prediction, or when Label Studio cannot tell now (then the push decides)."""
        from ..ls.shown import same_regions

        version = str(item.get("model_version", ""))
        try:
            self.count_request()
            same = [p for p in self.client().predictions.list(task=int(ls_task_id))
                    if getattr(p, "model_version", None) == version]
        except Exception as exc:  # noqa: BLE001 - any failure: push, as if it had changed
            logger.warning("task %s: cannot compare with its stored prediction (%s): pushing it",
                           ls_task_id, classify(exc).detail, extra={"task_id": ls_task_id})
            return False
        if not same:
            return False
        newest = max(same, key=lambda p: getattr(p, "id", 0) or 0)
        return same_regions(getattr(newest, "result", None) or [], item.get("result") or [])

    def push(self, ls_task_id: int, item: Mapping[str, Any], *, check_existing: bool = False
             ) -> PushResult:
        """Create the prediction of one task; never raises (the outcome says what happened)."""
        start = time.perf_counter()
        version = str(item.get("model_version", ""))

        def create() -> PushResult:
            # Content, not just the version: a refresh replaces a prediction of the same version
            if check_existing and self.shows(ls_task_id, item):
                return PushResult(PUSHED, "already present")
            self.count_request()
            self.client().predictions.create(
                task=int(ls_task_id), result=list(item.get("result") or []),
                score=float(item.get("score") or 0.0), model_version=version)
            return PushResult(PUSHED)

        outcome = self._attempt(create, start)
        _count(outcome, 1)
        if outcome.outcome != PUSHED:
            logger.warning("task %s: push %s: %s", ls_task_id, outcome.outcome, outcome.detail,
                           extra={"task_id": ls_task_id, "push_outcome": outcome.outcome})
        return outcome

    def _attempt(self, send, start: float) -> PushResult:
        """Run ``send()``, turning every failure into its outcome (a push never raises)."""
        try:
            outcome = send()
        except LabelStudioAccessError as exc:
            outcome = PushResult(AUTH, str(exc))
        except Exception as exc:  # noqa: BLE001 - classified below; a push never kills a worker
            outcome = classify(exc)
            if outcome.outcome == AUTH:
                self.reset()
        metrics.STAGE_SECONDS.labels(stage="push").observe(time.perf_counter() - start)
        return outcome

    def push_batch(self, project_id: int, items: Sequence[tuple[int, Mapping[str, Any]]]
                   ) -> PushResult:
        """Create the predictions of ``(task id, item)`` pairs of one project in one request.

        One outcome for the whole batch (Label Studio creates all or nothing); never raises.
        ``FAILED`` means Label Studio refused the batch (e.g. one task was deleted): push those
        tasks one by one to find out which.
        """
        if not items:
            return PushResult(PUSHED)
        from label_studio_sdk import PredictionRequest

        start = time.perf_counter()

        def send() -> PushResult:
            request = [PredictionRequest(task=int(task_id), result=list(item.get("result") or []),
                                         score=float(item.get("score") or 0.0),
                                         model_version=str(item.get("model_version", "")))
                       for task_id, item in items]
            self.count_request()
            self.client().projects.import_predictions(id=int(project_id), request=request)
            return PushResult(PUSHED)

        outcome = self._attempt(send, start)
        if outcome.outcome == PUSHED:
            _count(outcome, len(items))
        else:
            logger.warning("project %s: batch push of %d prediction(s) %s: %s", project_id,
                           len(items), outcome.outcome, outcome.detail,
                           extra={"project_id": project_id, "push_outcome": outcome.outcome})
        return outcome


def _count(outcome: PushResult, n: int) -> None:
    metrics.JOB_PUSHES.labels(outcome=outcome.outcome).inc(n)
