"""A fresh SQLite file opened by several processes at the same instant.

Switching a new file to WAL needs an exclusive lock; SQLite answers SQLITE_BUSY at once (no busy
handler) when two connections holding shared locks both try to upgrade. The store must wait that
out instead of reporting "cannot connect". Processes, not threads, so the openers really race.
"""
from __future__ import annotations

import multiprocessing

import pytest

from database_tools.store import Store

OPENERS = 4
ROUNDS = 6


def _open_at_barrier(url: str, barrier, results) -> None:
    try:
        barrier.wait(timeout=60)
        with Store(url) as store:
            results.put(("ok", store.db_version()))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent for the assertion
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_processes_opening_a_fresh_file_together_all_succeed(tmp_path, round_no):
    url = f"sqlite:///{tmp_path / f'fresh-{round_no}.db'}"
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(OPENERS), ctx.Queue()
    procs = [ctx.Process(target=_open_at_barrier, args=(url, barrier, results))
             for _ in range(OPENERS)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert outcomes == [("ok", 0)] * OPENERS
    with Store(url) as store:
        assert store.engine.dialect.name == "sqlite"
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
