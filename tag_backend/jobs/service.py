"""The job queue and this process's job worker, for one services object."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .push import LabelStudioPusher
from .queue import JobQueue
from .worker import Worker, WorkerOptions, WorkerServices

logger = logging.getLogger(__name__)


class JobService:
    """The queue in the services' store (opened on first use) and at most one running worker.

    ``store``: returns the concept store (the job tables live in it); ``pusher``: how finished
    predictions reach Label Studio.
    """

    def __init__(self, services: WorkerServices, store: Callable[[], object],
                 pusher: LabelStudioPusher) -> None:
        self._services, self._store, self.pusher = services, store, pusher
        self._queue: JobQueue | None = None
        self._worker: Worker | None = None
        self._lock = threading.Lock()

    @property
    def queue(self) -> JobQueue:
        with self._lock:
            if self._queue is None:
                self._queue = JobQueue.from_store(self._store())
            return self._queue

    def ensure_worker(self, options: WorkerOptions | None = None) -> Worker:
        """Start this process's worker if it is not running; returns it.

        Safe to call on every request: the second call only wakes the worker.
        """
        queue = self.queue
        with self._lock:
            worker = self._worker
            if worker is None or not worker.running:
                worker = Worker(queue, self._services, self.pusher,
                                options or WorkerOptions()).start()
                self._worker = worker
        worker.wake()
        return worker

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker (shutdown, tests); unfinished claims are given back."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(timeout)
