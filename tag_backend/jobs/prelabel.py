"""Pre-label a whole Label Studio project through the job engine (``tag-backend prelabel``).

1. **plan**: read the project (label config) and page through the tasks that need work with the
   SDK: ``fields="task_only"`` (no predictions or annotations are downloaded) and a Data Manager
   filter that leaves out tasks holding a prediction of the current ``model_version`` (and,
   with ``filter="unlabeled"``, tasks with annotations), 1,000 tasks per request; up to
   ``limit`` tasks are queued, in chunks.
2. **join or create**: a project has at most one active ``prelabel`` job. A second run on the
   same project — a resume after Ctrl-C or a kill, or a concurrent run — adds its new tasks to
   that job and works on it too; claims are leased, so two runs never compute or push the same
   task twice.
3. **run**: a worker (prefetch, batched engine, pushes) processes the queue while a progress bar
   shows tasks/s, ETA and failures, until the job has nothing left to compute or push.

With ``refresh=True`` (``prelabel --refresh``) step 1 instead selects the tasks no annotator has
submitted whose newest prediction by this backend has a region predicted as a concept that
changed since that prediction's knowledge (corrected, merged, renamed, rejected:
``database_tools.prediction_log.stale_tasks``), as a job of its own kind (``refresh``): that rule
knows concept ids, not region embeddings, so it selects every task a change *can* affect, and
the worker pushes a recomputed prediction only when it differs from the one Label Studio shows
(:mod:`tag_backend.ls.shown`). docs/learning.md says what the rule can miss.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import TagError
from ..ls.controls import parse_label_config
from .keys import cache_key
from .push import LabelStudioAccessError, LabelStudioPusher, classify
from .queue import JobProgress, JobQueue, task_payload
from .schema import PRELABEL, REFRESH
from .worker import Worker, WorkerOptions

logger = logging.getLogger(__name__)

FILTERS = ("unlabeled", "all")
#: Tasks per listing request: ``task_only`` tasks are small (id + data), so 1,000 per page
#: keeps planning at one request per 1,000 tasks.
PLAN_PAGE_SIZE = 1000


class PrelabelError(TagError):
    """The project cannot be pre-labelled (not found, unreachable, bad config)."""


class PrelabelInterrupted(TagError):
    """Stopped by the user; finished work is kept and the next run resumes."""

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(f"stopped: {progress.done}/{progress.total} done, {progress.failed} "
                         "failed. Run the same command again to resume.")
        self.progress = progress


@dataclass(frozen=True)
class PrelabelPlan:
    """What a run found and queued."""

    project_id: int
    model_version: str
    job_id: int | None
    joined: bool
    seen: int  # tasks the filtered listing returned (before ``limit`` stopped it)
    already_predicted: int  # of those, found predicted on a re-check (normally 0)
    labeled: int  # of those, found labeled on a re-check (normally 0)
    queued: int
    total: int | None = None  # tasks in the project (Label Studio's ``task_number``)
    listed_all: bool = True  # False: ``limit`` stopped the listing early
    ls_requests: int = 0  # HTTP requests to Label Studio (planning + pushes of this run)

    @property
    def skipped(self) -> int | None:
        """Tasks left alone: already predicted with this version, or labeled (``unlabeled``)."""
        if self.total is None or not self.listed_all:
            return None
        return self.total - self.seen + self.already_predicted + self.labeled
    refresh: bool = False  # planned by ``prelabel --refresh``


def _as_dict(task: Any) -> dict:
    if isinstance(task, Mapping):
        return dict(task)
    if hasattr(task, "model_dump"):
        return task.model_dump()
    return dict(task.dict())


def has_version(task: Mapping[str, Any], model_version: str) -> bool:
    """Whether a Label Studio task already holds a prediction of ``model_version``."""
    for prediction in task.get("predictions") or []:
        version = prediction.get("model_version") if isinstance(prediction, Mapping) else \
            getattr(prediction, "model_version", None)
        if version == model_version:
            return True
    versions = task.get("predictions_model_versions")
    if isinstance(versions, str) and versions:
        return model_version in {v.strip() for v in versions.split(",")}
    return False


def is_labeled(task: Mapping[str, Any]) -> bool:
    return bool(task.get("is_labeled") or (task.get("total_annotations") or 0) > 0
                or task.get("annotations"))


def _ls_call(what: str, fn, *args, **kwargs):
    """Run an SDK call, turning HTTP failures into clear errors."""
    try:
        return fn(*args, **kwargs)
    except TagError:
        raise
    except Exception as exc:  # noqa: BLE001 - SDK raises ApiError and httpx errors
        outcome = classify(exc)
        if outcome.outcome == "auth":
            raise LabelStudioAccessError(f"{what}: {outcome.detail}") from None
        if outcome.outcome == "gone":
            raise PrelabelError(f"{what}: not found in Label Studio") from None
        raise PrelabelError(f"{what}: {outcome.detail}") from None


def needs_work_query(model_version: str, filter: str) -> str:
    """Data Manager query (the ``query`` parameter of the task list) of the tasks to queue.

    ``predictions_model_versions not_contains [v]`` leaves out tasks with a prediction of
    ``v`` (Label Studio compares model versions as substrings, so a task whose only prediction
    has a version *containing* ``v`` is also left out); ``total_annotations = 0`` leaves out
    labeled tasks.
    """
    items = [{"filter": "filter:tasks:predictions_model_versions", "operator": "not_contains",
              "type": "List", "value": [model_version]}]
    if filter == "unlabeled":
        items.append(UNLABELED_FILTER)
    return json.dumps({"filters": {"conjunction": "and", "items": items}})


#: Data Manager filter item of the tasks no annotator has submitted.
UNLABELED_FILTER = {"filter": "filter:tasks:total_annotations", "operator": "equal",
                    "type": "Number", "value": 0}


def unlabeled_query() -> str:
    """Data Manager query of the unlabeled tasks (``prelabel --refresh`` plans among them)."""
    return json.dumps({"filters": {"conjunction": "and", "items": [UNLABELED_FILTER]}})


def iter_tasks(client, project_id: int, page_size: int = PLAN_PAGE_SIZE, *,
               query: str | None = None, fields: str = "task_only",
               on_request=None) -> Iterator[dict]:
    """Every task of the project matching ``query`` as a dict, one page in memory at a time.

    Pages are requested explicitly: the SDK pager asks for the page after the last one, which
    Label Studio answers with 404 (DRF pagination), so it cannot be iterated to the end.
    ``on_request()`` is called for every HTTP request (request accounting).
    """
    what = f"listing the tasks of project {project_id}"
    page = 1
    while True:
        try:
            if on_request is not None:
                on_request()
            pager = client.tasks.list(project=project_id, fields=fields, query=query,
                                      page=page, page_size=page_size)
        except Exception as exc:  # noqa: BLE001 - classified by _ls_call below
            if page > 1 and getattr(exc, "status_code", None) == 404:
                return  # past the last page
            _ls_call(what, _raise, exc)
        items = list(pager.items or [])
        for task in items:
            yield _as_dict(task)
        if len(items) < page_size:
            return
        page += 1


def _raise(exc: BaseException):
    raise exc


def _refresh_selection(services, tasks: Iterator[dict], limit: int | None
                       ) -> tuple[list[dict], int, int, int]:
    """(stale unlabeled tasks, seen, up to date, labeled) for ``prelabel --refresh``."""
    from database_tools.prediction_log import stale_tasks

    candidates, seen, labeled = [], 0, 0
    for task in tasks:
        seen += 1
        if is_labeled(task):
            labeled += 1
        else:
            candidates.append(task_payload(task))
    stale = stale_tasks(services.store, [str(t["id"]) for t in candidates])
    selected = [t for t in candidates if str(t["id"]) in stale][:limit]
    return selected, seen, len(candidates) - len(selected), labeled


def plan_prelabel(services, queue: JobQueue, pusher: LabelStudioPusher, project_id: int, *,
                  filter: str = "unlabeled", limit: int | None = None,
                  refresh: bool = False) -> PrelabelPlan:
    """Queue the project's tasks that need a prediction (joining an active job if any).

    :param refresh: queue only tasks whose stored prediction the knowledge learnt since can
        change (unlabeled ones; ``filter`` is ignored), whatever their model_version, as a
        ``refresh`` job (joining an active one): results equal to what Label Studio shows are
        not pushed.
    """
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    if limit is not None and limit < 1:
        raise ValueError("limit must be >= 1")
    client = pusher.client()
    pusher.count_request()
    project = _ls_call(f"project {project_id}", client.projects.get, id=project_id)
    label_config = getattr(project, "label_config", None) or ""
    parse_label_config(label_config)  # LabelConfigError if TAG cannot fill this project
    version = services.model_version()
    selected, seen, predicted, labeled, listed_all = [], 0, 0, 0, True
    if refresh:
        selected, seen, predicted, labeled = _refresh_selection(
            services, iter_tasks(client, project_id, query=unlabeled_query(),
                                 on_request=pusher.count_request), limit)
    query = needs_work_query(version, filter)
    tasks = () if refresh else iter_tasks(client, project_id, query=query,
                                          on_request=pusher.count_request)
    for task in tasks:
        seen += 1  # the filter already left out predicted (and labeled) tasks; re-checked here
        if has_version(task, version):
            predicted += 1
        elif filter == "unlabeled" and is_labeled(task):
            labeled += 1
        else:
            selected.append(task_payload(task))
            if limit is not None and len(selected) >= limit:
                listed_all = False
                break
    keys = [cache_key(version, label_config, t, services.output_fingerprint) for t in selected]
    kind = REFRESH if refresh else PRELABEL
    job_id = queue.find_active_job(project_id, kind)
    joined = job_id is not None
    if joined:
        added = queue.add_tasks(job_id, selected, keys=keys)
    elif selected:
        job_id = queue.create_job(kind, selected, label_config=label_config,
                                  model_version=version, project_id=project_id, push=True,
                                  keys=keys, created_by="cli")
        added = len(selected)
    else:
        added = 0
    total = getattr(project, "task_number", None)
    return PrelabelPlan(project_id, version, job_id, joined, seen, predicted, labeled, added,
                        int(total) if isinstance(total, int) else None, listed_all,
                        refresh=refresh)


def run_job(queue: JobQueue, worker: Worker, job_id: int, *, progress: bool = True,
            poll: float = 0.5) -> JobProgress:
    """Work on ``job_id`` until it has nothing left to compute or push; Ctrl-C stops cleanly."""
    from tqdm import tqdm

    state = queue.progress(job_id)
    bar = tqdm(total=state.total, initial=state.finished, unit="task", disable=not progress,
               dynamic_ncols=True, desc=f"job {job_id}")
    worker.start()
    try:
        while True:
            started = time.monotonic()
            state = queue.progress(job_id)  # O(job size): polled less often for huge jobs
            spent = time.monotonic() - started
            bar.total = state.total
            bar.update(state.finished - bar.n)
            bar.set_postfix(failed=state.failed, pushed=state.pushed,
                            push_waiting=state.push_pending, refresh=False)
            if worker.stats.auth_error:
                raise LabelStudioAccessError(worker.stats.auth_error)
            if state.settled or state.status == "cancelled":
                break
            time.sleep(max(poll, 20 * spent))
    except KeyboardInterrupt:
        worker.stop(release=True)
        raise PrelabelInterrupted(queue.progress(job_id)) from None
    finally:
        bar.close()
    worker.stop(release=True)
    queue.finish_settled_jobs()
    return queue.progress(job_id)


def prelabel_project(services, project_id: int, *, filter: str = "unlabeled",
                     limit: int | None = None, progress: bool = True, refresh: bool = False,
                     options: WorkerOptions = WorkerOptions()
                     ) -> tuple[PrelabelPlan, JobProgress | None]:
    """Plan and run a project's pre-labelling; returns the plan and the final job progress.

    ``services``: the command's :class:`tag_backend.services.Services`.
    """
    pusher, queue = services.jobs.pusher, services.jobs.queue
    plan = plan_prelabel(services, queue, pusher, project_id, filter=filter, limit=limit,
                         refresh=refresh)
    logger.info("project %s: %d tasks need work, %s skipped (predicted or labeled), %d queued "
                "(job %s%s)", project_id, plan.seen, plan.skipped, plan.queued, plan.job_id,
                ", joined" if plan.joined else "",
                extra={"job_id": plan.job_id, "project_id": project_id})
    if plan.job_id is None:
        return dataclasses.replace(plan, ls_requests=pusher.requests), None
    worker = Worker(queue, services, pusher, options)
    final = run_job(queue, worker, plan.job_id, progress=progress)
    logger.info("project %s: %d request(s) to Label Studio for %d task(s)", project_id,
                pusher.requests, final.total)
    return dataclasses.replace(plan, ls_requests=pusher.requests), final
