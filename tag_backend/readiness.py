"""Readiness (``/ready``) beside liveness (``/health``): may a load balancer send traffic here?

``/health`` only says the process answers (Label Studio calls it before every batch and must
not wait for models). ``/ready`` says it can *serve*:

* **models** loaded (a probe on a cold process starts loading them in the background);
* **database** reachable (the concept store answers its version query);
* **index** current: the loaded concept index, exemplars and aliases match the database's
  version — the probe refreshes them when another replica changed the database (corrections),
  so a replica reports ready again once it serves the newest state.

The database and index checks run on one background thread and the probe waits for them at
most ``timeout`` seconds: a hung database makes the probe answer "not ready" in time instead of
hanging the load balancer's request, and probes never pile up threads.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Readiness:
    ready: bool
    checks: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict:
        return {"status": "READY" if self.ready else "NOT READY", "checks": self.checks}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


class ReadinessProbe:
    """Checks one process's services; safe to call from many request threads."""

    def __init__(self, services, timeout: float = 2.0) -> None:
        self.services = services
        self.timeout = timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tag-ready")
        self._pending: Future | None = None
        self._lock = threading.Lock()

    def _database_and_index(self, models_loaded: bool) -> tuple[str, str]:
        version = self.services.store.db_version()
        if not models_loaded:
            return f"ok (version {version})", "waiting for the models"
        self.services.refresh()  # a new knowledge snapshot if another process changed the db
        knowledge = self.services.loaded_knowledge()
        index = getattr(knowledge, "index", None)
        return (f"ok (version {version})",
                f"ok ({getattr(index, 'version', '?')}, database version "
                f"{getattr(knowledge, 'db_version', '?')})")

    def check(self) -> Readiness:
        checks: dict[str, str] = {}
        loaded = self.services.models_loaded()
        if not loaded:
            self.services.wait_until_loaded(0)  # start loading in the background, do not wait
        checks["models"] = "ok" if loaded else "loading"
        with self._lock:
            if self._pending is None or self._pending.done():
                self._pending = self._executor.submit(self._database_and_index, loaded)
            pending = self._pending
        try:
            checks["database"], checks["index"] = pending.result(timeout=self.timeout)
        except FutureTimeout:
            checks["database"] = checks["index"] = f"no answer within {self.timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
            checks["database"] = checks["index"] = f"failed: {_first_line(exc)}"
        ready = loaded and all(v.startswith("ok") for v in checks.values())
        if not ready:
            logger.info("not ready: %s", checks)
        return Readiness(ready, checks)
