"""One job worker per process: prefetch -> batched engine -> results -> push, on five threads.

* **fetch** claims tasks (leased) and downloads/decodes their images into a bounded queue, so
  network and decoding overlap with model work while memory stays bounded (at most
  ``prefetch`` decoded images wait);
* **compute** takes up to ``batch_size`` ready images and runs one batched engine call;
* **finish** turns the regions into Label Studio items (mask cleaning, brush RLE) and records
  each task's result while the engine already runs the next batch (at most two batches wait);
  a result is recorded once, under its lease; failures are re-queued with back-off;
* **push** sends finished predictions to Label Studio (leased too), keeping them when it is
  unreachable;
* **heartbeat** renews this worker's leases, gives back expired ones of dead workers, marks
  settled jobs done and updates the queue-depth gauge.

A killed worker loses only its in-flight batch: those leases expire and another (or the
restarted) worker re-claims the tasks; finished tasks are never recomputed.
"""
from __future__ import annotations

import logging
import os
import queue as queue_mod
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from .. import metrics
from ..knowledge import Knowledge
from ..ls.controls import parse_label_config
from ..ls.predictor import FetchedTask, TaskPredictor
from .budget import CostEstimate
from .keys import cache_key
from .push import AUTH, PUSH_BATCH, PUSHED, LabelStudioPusher
from .push_queue import claim_pushes, push_claims
from .queue import ClaimedTask, JobQueue
from .schema import REFRESH

logger = logging.getLogger(__name__)


class WorkerServices(Protocol):
    """What a worker uses of the process's services (:class:`tag_backend.services.Services`).

    tasks: the shared task predictor; cost: the per-task cost estimate ``/predict`` budgets with.
    """

    tasks: TaskPredictor
    cost: CostEstimate

    def knowledge(self) -> Knowledge: ...

    def loaded_knowledge(self) -> Knowledge | None: ...

    def version_for(self, knowledge: Knowledge) -> str: ...

    def refresh(self) -> bool: ...


@dataclass(frozen=True)
class WorkerOptions:
    """batch_size: images per engine call. prefetch: decoded images allowed to wait.
    poll_seconds: idle sleep. push: send results to Label Studio. refresh_seconds: how often
    the concept database is checked for corrections (new index/exemplars)."""

    batch_size: int = 4
    prefetch: int = 8
    poll_seconds: float = 1.0
    push: bool = True
    refresh_seconds: float = 30.0


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    retried: int = 0
    pushed: int = 0
    unchanged: int = 0  # refresh results Label Studio already showed: not pushed
    push_errors: int = 0
    auth_error: str | None = None
    done_tasks: list[int] = field(default_factory=list)


def new_worker_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Processes the shared queue until stopped (:meth:`start` / :meth:`stop`)."""

    def __init__(self, queue: JobQueue, services: WorkerServices, pusher: LabelStudioPusher | None,
                 options: WorkerOptions = WorkerOptions(), worker_id: str | None = None) -> None:
        if options.batch_size < 1 or options.prefetch < 1:
            raise ValueError("batch_size and prefetch must be >= 1")
        self.queue, self.services, self.pusher, self.options = queue, services, pusher, options
        self.worker_id = worker_id or new_worker_id()
        self.stats = WorkerStats()
        self._ready: queue_mod.Queue = queue_mod.Queue(maxsize=options.prefetch)
        # Engine output waiting for masks/RLE/recording: at most two batches (bounded memory).
        self._post: queue_mod.Queue = queue_mod.Queue(maxsize=2)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_refresh = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Worker":
        loops = [("fetch", self._fetch_loop), ("compute", self._compute_loop),
                 ("finish", self._finish_loop), ("heartbeat", self._heartbeat_loop)]
        if self.options.push and self.pusher is not None and self.pusher.configured:
            loops.append(("push", self._push_loop))
        for name, target in loops:
            thread = threading.Thread(target=self._guard, args=(name, target),
                                      name=f"tag-jobs-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("job worker %s started", self.worker_id)
        return self

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def wake(self) -> None:
        """New work was queued: stop idling now."""
        self._wake.set()

    def stop(self, timeout: float = 60.0, release: bool = True) -> None:
        """Stop the threads (the batch in the engine finishes first) and give back claims."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if release:
            for pending in (self._ready, self._post):
                while not pending.empty():
                    pending.get_nowait()
            released = self.queue.release(self.worker_id)
            if released:
                logger.info("worker %s gave back %d unfinished task(s)", self.worker_id, released)

    def _guard(self, name: str, loop) -> None:
        """Run a loop forever: an error is logged and the loop resumes after a pause."""
        while not self._stop.is_set():
            try:
                loop()
                return
            except Exception:  # noqa: BLE001 - a worker thread must survive DB/network errors
                logger.exception("job worker %s thread failed; resuming", name)
                self._stop.wait(min(5.0, self.options.poll_seconds * 5))

    def _idle(self) -> None:
        self._wake.wait(self.options.poll_seconds)
        self._wake.clear()

    # ------------------------------------------------------------------ fetch
    def _fetch_loop(self) -> None:
        while not self._stop.is_set():
            room = self.options.prefetch - self._ready.qsize()
            claims = self.queue.claim(self.worker_id, min(self.options.batch_size, room)) \
                if room > 0 else []
            if not claims:
                self._idle()
                continue
            for claim in claims:
                fetched = self._fetch(claim)
                while not self._stop.is_set():
                    try:
                        self._ready.put((claim, fetched), timeout=0.5)
                        break
                    except queue_mod.Full:
                        continue

    def _fetch(self, claim: ClaimedTask) -> FetchedTask:
        try:
            layout = parse_label_config(claim.label_config)
        except Exception as exc:  # noqa: BLE001 - LabelConfigError and XML errors
            return FetchedTask(None, f"labeling config unusable: {exc}", retry=False)
        return self.services.tasks.fetch(claim.task, layout)

    # ------------------------------------------------------------------ compute
    def _compute_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._ready.get(timeout=0.5)]
            except queue_mod.Empty:
                self._maybe_refresh()
                continue
            while len(batch) < self.options.batch_size:
                try:
                    batch.append(self._ready.get_nowait())
                except queue_mod.Empty:
                    break
            self._process(batch)
            self._maybe_refresh()

    def _process(self, batch: list[tuple[ClaimedTask, FetchedTask]]) -> None:
        """Run the engine on a batch and hand the regions to the finishing thread."""
        good = []
        for claim, fetched in batch:
            if fetched.image is None:
                self._failed(claim, fetched.error, fetched.retry)
            else:
                good.append((claim, fetched))
        if not good:
            return
        try:
            # One snapshot for the batch: its version is the version of what named the regions.
            knowledge = self.services.knowledge()  # loads models and knowledge on first use
            version = self.services.version_for(knowledge)
            started = time.perf_counter()
            regions = self.services.tasks.regions([f.image for _, f in good], knowledge)
            self.services.cost.update((time.perf_counter() - started) / len(good))
        except Exception as exc:  # noqa: BLE001 - isolate the bad image: retry one by one
            if len(good) == 1:
                self._failed(good[0][0], f"engine failed: {type(exc).__name__}: {exc}", True)
                return
            logger.warning("batch of %d failed (%s); retrying image by image", len(good), exc)
            for pair in good:
                self._process([pair])
            return
        while not self._stop.is_set():
            try:
                self._post.put((good, regions, version, knowledge), timeout=0.5)
                return
            except queue_mod.Full:
                continue

    def _finish_loop(self) -> None:
        """Masks -> Label Studio items -> recorded results, overlapping the next engine batch."""
        while not self._stop.is_set():
            try:
                good, regions, version, knowledge = self._post.get(timeout=0.5)
            except queue_mod.Empty:
                continue
            self._finish(good, regions, version, knowledge)
            self._gauges()

    def _finish(self, good, regions, version: str, knowledge: Knowledge) -> None:
        started = time.perf_counter()
        for (claim, fetched), found in zip(good, regions):
            try:
                layout = parse_label_config(claim.label_config)
                item = self.services.tasks.item(fetched.image, found, layout, version,
                                                task=claim.task, knowledge=knowledge)
            except Exception as exc:  # noqa: BLE001 - one bad result never stops the others
                self._failed(claim, f"building the result failed: {type(exc).__name__}: {exc}",
                             True)
                continue
            key = cache_key(item["model_version"], claim.label_config, claim.task,
                            self.services.output_fingerprint)
            unchanged = claim.kind == REFRESH and self._shown_already(claim, item)
            if self.queue.complete(claim, self.worker_id, item, key, unchanged=unchanged):
                self.stats.done += 1
                self.stats.unchanged += unchanged
                self.stats.done_tasks.append(claim.ls_task_id)
                metrics.JOB_TASKS.labels(outcome="done").inc()
                self._wake.set()
        metrics.STAGE_SECONDS.labels(stage="record").observe(time.perf_counter() - started)

    def _shown_already(self, claim: ClaimedTask, item: dict) -> bool:
        """A refresh result that Label Studio already shows (same regions, same names)."""
        if self.pusher is None or not self.options.push or not self.pusher.configured:
            return False
        return self.pusher.shows(claim.ls_task_id, item)

    def _failed(self, claim: ClaimedTask, error: str, retry: bool) -> None:
        status = self.queue.fail(claim, self.worker_id, error, retry=retry)
        outcome = "failed" if status == "failed" else "retry"
        metrics.JOB_TASKS.labels(outcome=outcome).inc()
        if status == "failed":
            self.stats.failed += 1
        else:
            self.stats.retried += 1
        logger.warning("task %s: %s (attempt %d, %s)", claim.ls_task_id, error, claim.attempts,
                       "given up" if status == "failed" else "will retry",
                       extra={"task_id": claim.ls_task_id, "job_id": claim.job_id})

    def _gauges(self) -> None:
        """Queue depth, concept-database version and index size for ``/metrics``."""
        try:
            self.queue.depth()
            knowledge = self.services.loaded_knowledge()
            if knowledge is not None:
                if knowledge.db_version is not None:
                    metrics.DB_VERSION.set(knowledge.db_version)
                if knowledge.index_size is not None:
                    metrics.INDEX_SIZE.set(knowledge.index_size)
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the worker
            logger.debug("cannot update gauges: %s", exc)

    def _maybe_refresh(self) -> None:
        """Pick up corrections (new exemplars, index) now and then, between batches."""
        now = time.monotonic()
        if now - self._last_refresh < self.options.refresh_seconds:
            return
        self._last_refresh = now
        try:
            self.services.refresh()  # a no-op until the models are loaded
        except Exception as exc:  # noqa: BLE001 - predicting with the loaded state is fine
            logger.warning("cannot refresh from the concept database: %s", exc)

    # ------------------------------------------------------------------ push
    def _push_loop(self) -> None:
        while not self._stop.is_set():
            claims = claim_pushes(self.queue, self.worker_id, PUSH_BATCH)
            if not claims:
                self._idle()
                continue
            for _claim, result in push_claims(self.queue, self.pusher, self.worker_id, claims):
                if result.outcome == PUSHED:
                    self.stats.pushed += 1
                else:
                    self.stats.push_errors += 1
                if result.outcome == AUTH:
                    self.stats.auth_error = result.detail

    # ------------------------------------------------------------------ heartbeat
    def _heartbeat_loop(self) -> None:
        every = max(0.2, self.queue.policy.lease_seconds / 4)
        while not self._stop.is_set():
            self.queue.heartbeat(self.worker_id)
            self.queue.expire_leases()
            self.queue.finish_settled_jobs()
            self.queue.depth()
            self._stop.wait(every)
