"""A durable spool of webhook payloads: written before ``/webhook`` answers, so a crash loses
nothing, and independent of the concept database (which may be down: corrections wait here).

Layout under ``<data_dir>/webhook-spool/``: ``pending/`` (waiting), ``working/`` (claimed by
one worker), ``failed/`` (permanent errors, kept for inspection). Every file is written to a
temp name, fsynced, then renamed (atomic on POSIX). A file is claimed by renaming it into
``working/`` (only one process can win), so several gunicorn workers may share the spool.
``keys/`` holds one empty marker per payload digest from ``put`` until the payload is done or
failed: the duplicate check of ``/webhook`` is one ``stat``, not a scan of a backlog that may
hold thousands of files.
File names are ``<due time>-<attempts>-<digest>.json`` (``.<pid>`` added while claimed), so
they sort by due time (retries with back-off wait their turn) and carry the payload's identity
(its digest) through every retry: a re-delivery of a payload already waiting, claimed or waiting
for a retry is not stored twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PUT_STRIPES = 16


@dataclass(frozen=True)
class SpoolItem:
    """One claimed payload: its file in ``working/``, the payload and the attempts so far."""

    path: Path
    payload: dict
    attempts: int


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WebhookSpool:
    """Durable FIFO with retries; safe across threads and processes on one filesystem."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.pending, self.working, self.failed, self.keys = (
            self.root / d for d in ("pending", "working", "failed", "keys")
        )
        for d in (self.pending, self.working, self.failed, self.keys):
            d.mkdir(parents=True, exist_ok=True)
        # The check-then-write of put() runs in one thread at a time per digest: striped, so
        # different payloads write (and wait for their fsyncs) in parallel.
        self._put_locks = [threading.Lock() for _ in range(_PUT_STRIPES)]

    # ------------------------------------------------------------------ writing
    def put(self, payload: dict) -> str:
        """Persist ``payload`` durably; returns its id. Identical payloads share one file."""
        data = json.dumps({"attempts": 0, "payload": payload}, separators=(",", ":")).encode()
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]
        name = f"{time.time():017.6f}-0-{digest}.json"
        with self._put_locks[int(digest[:8], 16) % _PUT_STRIPES]:
            if self.holds(digest):
                return digest  # the same delivery is already waiting or in work: nothing to add
            self._write_atomic(self.pending / name, data)
            # After the payload: a crash in between loses only the duplicate check, never data.
            (self.keys / digest).touch()
        return digest

    def holds(self, digest: str) -> bool:
        """Whether a payload with this digest is pending (also awaiting a retry) or claimed."""
        return (self.keys / digest).exists()

    def _write_atomic(self, target: Path, data: bytes) -> None:
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    # ------------------------------------------------------------------ reading
    def depth(self) -> int:
        return len(self._pending_names())

    def _pending_names(self) -> list[str]:
        # Plain names from one listdir: a backlog holds thousands of files, and the correction
        # worker lists it per payload while /webhook threads wait for the GIL.
        return [name for name in os.listdir(self.pending) if name.endswith(".json")]

    def claim(self) -> SpoolItem | None:
        """The oldest due payload, moved to ``working/``; None when nothing is due."""
        now = time.time()
        for name in sorted(self._pending_names()):
            path = self.pending / name
            try:
                due = float(path.name.split("-", 1)[0])
            except ValueError:
                due = 0.0
            if due > now:
                break  # sorted by due time: nothing later is due either
            target = self.working / f"{path.stem}.{os.getpid()}.json"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue  # another worker claimed it
            try:
                record = json.loads(target.read_text(encoding="utf-8"))
                return SpoolItem(target, record["payload"], int(record.get("attempts", 0)))
            except (ValueError, KeyError, OSError) as exc:
                self._fail(target, f"unreadable spool file: {exc}")
        return None

    # ------------------------------------------------------------------ outcomes
    def done(self, item: SpoolItem) -> None:
        item.path.unlink(missing_ok=True)
        self._forget(item.path)

    def _forget(self, path: Path) -> None:
        """Drop the duplicate marker: a later identical delivery is stored (recording is
        idempotent, so it changes nothing)."""
        (self.keys / digest_of(path)).unlink(missing_ok=True)

    def retry(self, item: SpoolItem, delay: float) -> None:
        """Put ``item`` back, due after ``delay`` seconds."""
        digest = digest_of(item.path)
        attempts = item.attempts + 1
        name = f"{time.time() + delay:017.6f}-{attempts}-{digest}.json"
        data = json.dumps({"attempts": attempts, "payload": item.payload}).encode()
        self._write_atomic(self.pending / name, data)
        item.path.unlink(missing_ok=True)

    def fail(self, item: SpoolItem, reason: str) -> None:
        self._fail(item.path, reason)

    def _fail(self, path: Path, reason: str) -> None:
        target = self.failed / path.name
        os.replace(path, target)
        self._forget(path)
        (self.failed / (path.name + ".error.txt")).write_text(reason + "\n", encoding="utf-8")
        logger.error("webhook payload %s failed permanently: %s", path.name, reason)

    def recover(self) -> int:
        """Return items claimed by dead processes to ``pending/`` (at start-up)."""
        moved = 0
        for path in self.working.glob("*.json"):
            try:
                pid = int(path.stem.rsplit(".", 1)[-1])
            except ValueError:
                pid = -1
            if pid > 0 and pid != os.getpid() and _alive(pid):
                continue
            base = path.stem.rsplit(".", 1)[0]
            try:
                os.rename(path, self.pending / f"{base}.json")
                moved += 1
            except FileNotFoundError:
                continue
        if moved:
            logger.info("recovered %d unfinished webhook payload(s)", moved)
        return moved


def digest_of(path: Path) -> str:
    """The payload digest in a spool file name (``<due>-<attempts>-<digest>[.<pid>].json``).

    The due time itself contains a dot, so the name is split on ``-`` first.
    """
    return path.name.split("-", 2)[-1].split(".", 1)[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_failed(spool: WebhookSpool) -> list[dict[str, Any]]:
    """The permanently failed payloads with their reasons (for operators and tests)."""
    out = []
    for path in sorted(spool.failed.glob("*.json")):
        reason_file = spool.failed / (path.name + ".error.txt")
        reason = reason_file.read_text(encoding="utf-8").strip() if reason_file.exists() else ""
        out.append({"file": path.name, "reason": reason})
    return out
