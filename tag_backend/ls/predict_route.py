"""What ``/predict`` answers: stored predictions, what fits in the time budget, a job for the rest.

Label Studio sends every selected task in one ``/predict`` and gives up after
``ML_TIMEOUT_PREDICT`` (100 s). So (:func:`tag_backend.jobs.budget.predict_with_budget`):
stored predictions of the current ``model_version`` are answered at once, the others are
computed while the next one is expected to fit ``Settings.predict_budget_seconds``, and the
rest become a background job whose predictions are pushed to Label Studio as they finish.

While the models are not loaded yet (first request after start), they load in the background
and the request waits for them at most half the budget; if they are still loading, everything
not stored is queued. Interactive calls (``params.context`` set) are answered directly with the
region(s) the prompt selects (tag_backend.ls.interactive): Label Studio waits for them. A request
with more than :data:`~.protocol.MAX_TASKS_PER_REQUEST` tasks computes nothing inline: every task
not stored is queued at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..jobs.budget import predict_with_budget
from .layout import ResultLayout
from .protocol import MAX_TASKS_PER_REQUEST, PredictRequest

logger = logging.getLogger(__name__)


def predict_results(services, req: PredictRequest, layout: ResultLayout) -> tuple[list[Any], str]:
    """The reply's ``results`` list (one entry per task, in order) and its ``model_version``.

    ``services``: the process's :class:`tag_backend.services.Services`.
    """
    if req.context is not None:  # a smart-tool prompt: only the region(s) it selects
        knowledge = services.knowledge()
        version = services.version_for(knowledge)
        return [services.interactive.predict(task, layout, req.context, version, knowledge)
                for task in req.tasks], version
    settings = services.settings
    started = time.monotonic()
    oversized = len(req.tasks) > MAX_TASKS_PER_REQUEST  # nothing inline: all queued as a job
    if oversized:
        logger.info("/predict with %d tasks (> %d): queued as a job", len(req.tasks),
                    MAX_TASKS_PER_REQUEST)
    ready = not oversized and services.wait_until_loaded(settings.predict_budget_seconds / 2)
    knowledge = None
    if ready:
        _refresh(services)  # close the correction loop: newest exemplars and index
        knowledge = services.knowledge()
        version = services.version_for(knowledge)
    else:
        version = services.model_version()
    budget = 0.0 if oversized else max(
        0.0, settings.predict_budget_seconds - (time.monotonic() - started))
    project = int(req.project) if req.project and str(req.project).isdigit() else None
    push = services.label_studio.configured
    outcome = predict_with_budget(
        services.jobs.queue, req.tasks, label_config=req.label_config or "",
        model_version=version, budget=budget,
        predict_one=lambda task: services.tasks.predict(task, layout, version, knowledge),
        project_id=project, push=push, engine_ready=ready, estimate=services.cost,
        output=services.output_fingerprint)
    if outcome.queued:
        services.jobs.ensure_worker()
        if not push and outcome.job_id is not None:
            logger.warning("%d task(s) queued but LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY are not "
                           "set: their predictions are stored and returned by the next "
                           "'Retrieve Predictions' instead of being pushed", len(outcome.queued))
    return outcome.items, version


def _refresh(services) -> None:
    try:
        services.refresh()
    except Exception as exc:  # noqa: BLE001 - predicting with the loaded snapshot is fine
        logger.warning("cannot refresh from the concept database (predicting with the loaded "
                       "state): %s", str(exc).splitlines()[0][:200] if str(exc) else exc)
