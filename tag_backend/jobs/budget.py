"""``/predict`` within a time budget: answer what fits, queue the rest as a background job.

Label Studio sends every selected task in one ``/predict`` and gives up after
``ML_TIMEOUT_PREDICT`` (100 s), while TAG needs seconds per image on CPU. So:

1. tasks whose prediction for the current ``model_version`` (and labeling config) is already
   stored are answered from the store at once;
2. the others are computed in order while the next one is expected to finish within
   ``Settings.predict_budget_seconds`` (the per-task cost is a running average of this process);
3. the rest become a job; their item in the reply is an **empty list** — Label Studio accepts a
   list of predictions per task (LS 1.23 ``ml/models.py::_get_predictions_from_ml_backend``) and
   stores nothing for an empty one, so the reply keeps one item per task, in order, and no empty
   placeholder prediction blocks the real one. The job worker pushes each prediction to Label
   Studio through the SDK as it finishes; a later "Retrieve Predictions" is answered from the
   store.

While the models are not loaded yet (``engine_ready`` False: the first request after start),
everything not stored is queued: loading alone could exceed Label Studio's timeout. The server's
``/predict`` handler (:mod:`tag_backend.ls.predict_route`) decides that and supplies the work.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .keys import cache_key
from .queue import JobQueue, task_payload
from .schema import PREDICT

logger = logging.getLogger(__name__)

#: Share of the budget kept free for answering (JSON encoding, network): compute stops earlier.
SAFETY_MARGIN = 0.1


class CostEstimate:
    """Running average of seconds per task (exponential, thread-safe); None until measured."""

    def __init__(self, alpha: float = 0.3, initial: float | None = None) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.value = initial
        self._lock = threading.Lock()

    def update(self, seconds: float) -> None:
        with self._lock:
            self.value = seconds if self.value is None else (
                self.alpha * seconds + (1 - self.alpha) * self.value)


@dataclass
class BudgetOutcome:
    """What happened to each task of one request."""

    items: list[Any]
    cached: list[int] = field(default_factory=list)
    computed: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    job_id: int | None = None


def compute_within_budget(tasks: Sequence[Any], indices: Sequence[int], budget: float,
                          predict_one: Callable[[Any], dict], estimate: CostEstimate,
                          clock: Callable[[], float] = time.monotonic
                          ) -> tuple[dict[int, dict], list[int]]:
    """Compute ``tasks[i]`` for ``i`` in order while the next one should end within ``budget``.

    An unknown cost (nothing measured yet) lets the first task run. Returns the items by index
    and the indices left over.
    """
    start = clock()
    usable = budget * (1 - SAFETY_MARGIN)
    done: dict[int, dict] = {}
    for n, i in enumerate(indices):
        expected = estimate.value or 0.0
        if clock() - start + expected > usable:
            return done, list(indices[n:])
        t0 = clock()
        done[i] = predict_one(tasks[i])
        estimate.update(clock() - t0)
    return done, []


def predict_with_budget(queue: JobQueue, tasks: Sequence[Any], *, label_config: str,
                        model_version: str, budget: float, predict_one: Callable[[Any], dict],
                        project_id: int | None, push: bool, engine_ready: bool,
                        estimate: CostEstimate | None = None, clock: Callable[[], float] = time.monotonic,
                        output: str = "") -> BudgetOutcome:
    """The ``/predict`` items of ``tasks`` (see the module docstring); queues a job if needed.

    ``estimate``: this process's seconds-per-task estimate (updated here as tasks finish).
    ``output``: the fingerprint of the prediction-shaping settings (part of each task's key).
    """
    keys = [cache_key(model_version, label_config, t, output) if _has_id(t) else "" for t in tasks]
    stored = queue.cached(keys)
    items: list[Any] = [None] * len(tasks)
    outcome = BudgetOutcome(items)
    todo = []
    for i, key in enumerate(keys):
        if key and key in stored:
            items[i] = stored[key]
            outcome.cached.append(i)
        else:
            todo.append(i)
    if engine_ready:
        done, todo = compute_within_budget(tasks, todo, budget, predict_one,
                                           estimate or CostEstimate(), clock)
    else:
        done = {}
    for i, item in done.items():
        items[i] = item
        outcome.computed.append(i)
    outcome.job_id = _queue_rest(queue, tasks, keys, todo, outcome, label_config=label_config,
                                 model_version=model_version, project_id=project_id, push=push)
    return outcome


def _has_id(task: Any) -> bool:
    return isinstance(task, Mapping) and isinstance(task.get("id"), int)


def _queue_rest(queue: JobQueue, tasks, keys, todo: list[int], outcome: BudgetOutcome, *,
                label_config: str, model_version: str, project_id: int | None,
                push: bool) -> int | None:
    """Queue the tasks left over (not those already queued); their items are ``[]``."""
    new = []
    already = queue.pending_keys(keys[i] for i in todo)
    for i in todo:
        if not _has_id(tasks[i]):
            outcome.items[i] = {"result": [], "score": 0.0, "model_version": model_version}
            continue
        outcome.items[i] = []
        outcome.queued.append(i)
        if keys[i] not in already:
            new.append(i)
    if not new:
        return None
    job_id = queue.create_job(PREDICT, [task_payload(tasks[i]) for i in new],
                              label_config=label_config, model_version=model_version,
                              project_id=project_id, push=push,
                              keys=[keys[i] for i in new], created_by="/predict")
    logger.info("/predict: %d task(s) queued as job %s (budget exhausted)", len(new), job_id,
                extra={"job_id": job_id, "tasks": len(new)})
    queue.depth()
    return job_id
