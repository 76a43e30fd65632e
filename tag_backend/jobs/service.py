"""The process-wide job queue and worker of a backend process (one worker per process)."""
from __future__ import annotations

import logging
import threading

from .engine import TaskEngine
from .push import LabelStudioPusher
from .queue import JobQueue
from .worker import Worker, WorkerOptions

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_queues: dict[int, JobQueue] = {}
_workers: dict[int, Worker] = {}


def queue_for(runtime) -> JobQueue:
    """The job queue in the runtime's concept store (tables created on first use)."""
    key = id(runtime)
    with _lock:
        if key not in _queues:
            _queues[key] = JobQueue.from_store(runtime.store)
        return _queues[key]


def ensure_worker(runtime, fetcher=None, options: WorkerOptions | None = None) -> Worker:
    """Start this process's worker for ``runtime`` if it is not running; returns it.

    Safe to call on every request: the second call only wakes the worker.
    """
    key = id(runtime)
    queue = queue_for(runtime)
    with _lock:
        worker = _workers.get(key)
        if worker is None or not worker.running:
            worker = Worker(queue, TaskEngine(runtime, fetcher),
                            LabelStudioPusher.from_settings(runtime.settings),
                            options or WorkerOptions()).start()
            _workers[key] = worker
    worker.wake()
    return worker


def stop_workers(timeout: float = 30.0) -> None:
    """Stop every worker of this process (tests, shutdown); unfinished claims are given back."""
    with _lock:
        workers = list(_workers.values())
        _workers.clear()
    for worker in workers:
        worker.stop(timeout)
