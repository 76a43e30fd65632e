"""The pre-labelling queue at project scale, on a real PostgreSQL (or any ``--db-url``).

    python -m benchmarks.scale                       # throwaway local PostgreSQL, 1,000,000 tasks
    python -m benchmarks.scale --tasks 200000 --db-url postgresql+psycopg://user@host/db

Measured in one run, printed as one table:

1. **enqueue**: one job of N tasks (``JobQueue.create_job``: chunked COPY + ``INSERT ... ON
   CONFLICT DO NOTHING``), seconds and tasks/s;
2. **claim latency** with N queued and ``--workers`` processes claiming batches of
   ``--batch`` concurrently (``FOR UPDATE SKIP LOCKED``): p50/p99 per claim, timed after
   each worker's first claims (a running worker) and after the enqueue's checkpoint; and
   again with workers that spend ``--engine-ms`` per task between claims, as a model would
   (the cores are not saturated then);
3. **queue overhead per task**: each worker records every claimed task at once with an empty
   result — no model runs, so this is *the queue's own cost* (claim + record), per task and
   as the workers' combined tasks/s;
   With the throwaway server, ``pg_stat_statements`` also reports the database's own time per
   claim and record statement — what the latencies are made of once client scheduling (a
   loaded machine) is taken out;
4. **periodic queries at N rows**: heartbeat (lease renewal), lease expiry, settling jobs and
   the queue-depth count, p50/p99;
5. **database size per finished task**: ``--size-tasks`` tasks finished with results of
   ``--result-kb`` KB (synthetic brush-like JSON), measured after ``VACUUM FULL`` (live data
   only) with the push still pending, after the pushes are confirmed (results dropped, as
   ``mark_pushes`` does) and after ``jobs purge``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Iterator

import numpy as np
from sqlalchemy import text, update

BENCH_ITEM = {"result": [], "score": 0.0, "model_version": "bench"}
TABLES = ("prelabel_jobs", "prelabel_tasks", "prelabel_predictions")
#: Claims each worker makes before the clock starts: a worker that has been running for a
#: while has its connections open and its statements prepared (psycopg prepares one after 5
#: runs, PostgreSQL keeps one plan after 5 more); the first claims would otherwise measure
#: connecting and planning.
WARM_UP_CLAIMS = 12


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _queue(url: str):
    from database_tools.store import Store
    from tag_backend.jobs.queue import JobQueue

    return JobQueue.from_store(Store(url))


def _tasks(n: int, start: int = 1) -> Iterator[dict]:
    for i in range(start, start + n):
        yield {"id": i, "data": {"image": f"s3://bucket/images/{i:08d}.jpg"}}


def _claim_worker(url: str, worker_id: str, seconds: float, batch: int, engine_s: float, start,
                  out) -> None:
    """Claim, spend ``engine_s`` per task (0: the engine returns at once) and record, until
    ``seconds`` pass; sends (claim latencies, seconds spent recording, tasks)."""
    queue = _queue(url)
    for _ in range(WARM_UP_CLAIMS):  # measure a running worker: connected, statements prepared
        for claim in queue.claim(worker_id, batch):
            queue.complete(claim, worker_id, BENCH_ITEM, f"bench-{claim.ls_task_id}")
    start.wait()
    claims_s, record_s, n = [], 0.0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        claims = queue.claim(worker_id, batch)
        claims_s.append(time.perf_counter() - t0)
        for claim in claims:
            if engine_s:
                time.sleep(engine_s)
            r0 = time.perf_counter()
            queue.complete(claim, worker_id, BENCH_ITEM, f"bench-{claim.ls_task_id}")
            record_s += time.perf_counter() - r0
        n += len(claims)
    out.put((claims_s, record_s, n))


def _settle(queue) -> None:
    """Statistics and a checkpoint after the enqueue, before the claims are timed.

    The enqueue writes ~500 MB of WAL for 1,000,000 tasks, and the checkpoint that WAL volume
    triggers landed inside the 20 s claim window in some runs and not in others (claim p99
    4.0 vs 5.6 ms on the same code). A server checkpoints within minutes of such a write
    anyway (``checkpoint_timeout``); here it happens first, so that runs compare. Needs the
    ``pg_checkpoint`` role (or superuser) on a ``--db-url`` server, else it is skipped.
    """
    with queue.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.exec_driver_sql("ANALYZE prelabel_tasks")
        try:
            conn.exec_driver_sql("CHECKPOINT")
        except Exception as exc:  # noqa: BLE001 - a --db-url user without the right
            print(f"CHECKPOINT skipped ({type(exc).__name__}): claims may overlap the one "
                  "the enqueue triggers")


def bench_enqueue(queue, n: int) -> tuple[int, float]:
    started = time.perf_counter()
    job = queue.create_job("prelabel", list(_tasks(n)), label_config="<View/>",
                           model_version="bench", project_id=1, created_by="bench")
    return job, time.perf_counter() - started


def _statement_stats(queue) -> dict[str, tuple[int, float, float]] | None:
    """Server-side (calls, mean ms, max ms) of the claim and record statements, from
    ``pg_stat_statements`` (None when the extension is not loaded)."""
    if queue.dialect != "postgresql":
        return None
    kinds = {"claim": "WITH picked AS MATERIALIZED%prelabel_tasks%",
             "record (task row + result row)": "WITH done AS%prelabel_predictions%"}
    out = {}
    try:
        with queue.engine.connect() as conn:
            for name, pattern in kinds.items():
                row = conn.execute(text(
                    "SELECT sum(calls), sum(total_exec_time) / greatest(sum(calls), 1), "
                    "max(max_exec_time) FROM pg_stat_statements WHERE query LIKE :p"),
                    {"p": pattern}).first()
                out[name] = (int(row[0] or 0), float(row[1] or 0), float(row[2] or 0))
    except Exception:  # noqa: BLE001 - extension not installed on a --db-url server
        return None
    return out


def _reset_statement_stats(queue) -> None:
    if queue.dialect != "postgresql":
        return
    try:
        with queue.engine.begin() as conn:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.exec_driver_sql("SELECT pg_stat_statements_reset()")
    except Exception:  # noqa: BLE001 - not loaded (shared_preload_libraries): skip the numbers
        pass


def bench_claims(url: str, workers: int, seconds: float, batch: int, engine_s: float = 0.0) -> dict:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_claim_worker, args=(url, f"bench-w{i}", seconds, batch, engine_s,
                                                     start, out)) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(min(30.0, 3.0 + workers))  # let every process import and connect
    wall = time.perf_counter()
    start.set()
    results = [out.get(timeout=seconds + 600) for _ in procs]
    wall = time.perf_counter() - wall
    for p in procs:
        p.join(60)
    claims = [c for r in results for c in r[0]]
    record_s = sum(r[1] for r in results)
    done = max(sum(r[2] for r in results), 1)
    return {"claims": len(claims), "claim_p50_ms": 1000 * _pct(claims, 50),
            "claim_p99_ms": 1000 * _pct(claims, 99), "record_per_task_ms": 1000 * record_s / done,
            "tasks": done, "tasks_per_s": done / wall,
            "queue_ms_per_task": 1000 * (sum(claims) + record_s) / done}


def _timed(fn, runs: int) -> tuple[float, float]:
    values = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        values.append(time.perf_counter() - t0)
    return 1000 * _pct(values, 50), 1000 * _pct(values, 99)


def bench_periodic(queue, runs: int = 30) -> dict:
    queue.claim("bench-heartbeat", 4)  # this worker holds four leases, like a busy worker

    def depth():
        queue._depth = None  # force a recount: measure the count, not the cache
        queue.depth()

    out = {"heartbeat": _timed(lambda: queue.heartbeat("bench-heartbeat"), runs),
           "expire_leases": _timed(queue.expire_leases, runs),
           "finish_settled_jobs": _timed(queue.finish_settled_jobs, runs),
           "depth (count)": _timed(depth, max(3, runs // 5))}
    queue.release("bench-heartbeat")
    return out


def claim_plan(queue, without_index: bool = False) -> str:
    """PostgreSQL's ``EXPLAIN ANALYZE`` of one claim's pick at this size. ``without_index``:
    the same query with the partial claim index dropped inside the (rolled back) transaction —
    what a claim cost before the index existed."""
    if queue.dialect != "postgresql":
        return ""
    from sqlalchemy.dialects import postgresql

    pick = queue._claimable(time.time()).limit(4).with_for_update(skip_locked=True)
    sql = str(pick.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    with queue.engine.connect() as conn:
        transaction = conn.begin()
        try:
            if without_index:
                conn.exec_driver_sql("DROP INDEX ix_prelabel_tasks_queued")
            rows = conn.exec_driver_sql("EXPLAIN ANALYZE " + sql).all()
        finally:
            transaction.rollback()
    return "\n".join(r[0] for r in rows)


def _executed_ms(plan: str) -> str:
    lines = [line for line in plan.splitlines() if "Execution Time" in line]
    return lines[0].split(":", 1)[1].strip() if lines else "?"


def _db_bytes(queue) -> int:
    with queue.engine.connect() as conn:
        if queue.dialect == "postgresql":
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM FULL " + ", ".join(TABLES))
            return int(sum(conn.scalar(text(f"SELECT pg_total_relation_size('{t}')"))
                           for t in TABLES))
        conn.exec_driver_sql("VACUUM")
        return int(conn.scalar(text("SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                                    "(SELECT name FROM sqlite_master WHERE tbl_name IN "
                                    f"{TABLES})")))


def _result_json(kb: int, rng: np.random.Generator) -> str:
    """A brush-like result of about ``kb`` KB: RLE integer lists (compress like real ones)."""
    regions = []
    per_region = max(1, kb * 1024 // (4 * 5))
    for r in range(5):
        rle = rng.integers(0, 256, per_region // 1).tolist()
        regions.append({"id": f"r{r}", "type": "brushlabels", "from_name": "tag",
                        "to_name": "image", "original_width": 1024, "original_height": 768,
                        "value": {"format": "rle", "rle": rle, "brushlabels": ["object"]}})
    text_ = json.dumps({"result": regions, "score": 0.5, "model_version": "bench"})
    return text_


def bench_size(url: str, n: int, kb: int) -> dict:
    """Bytes per finished task: push pending, pushed (results dropped), purged."""
    from tag_backend.jobs.schema import CachedPrediction, Job, JobTask

    queue = _queue(url)
    with queue.engine.begin() as conn:  # the size is measured alone: drop earlier jobs
        for table in reversed(TABLES):
            conn.execute(text(f"DELETE FROM {table}"))
    base = _db_bytes(queue)
    job = queue.create_job("prelabel", list(_tasks(n, start=10_000_000)), label_config="<View/>",
                           model_version="bench", project_id=2, created_by="bench",
                           keys=[f"size-{i}" for i in range(n)])
    rng = np.random.default_rng(0)
    now = time.time()
    # Finish every task as the worker's record step does (bulk: one transaction per 1,000).
    with queue.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, ls_task_id, cache_key FROM prelabel_tasks "
                                 "WHERE job_id = :j ORDER BY id"), {"j": job}).all()
    for start in range(0, len(rows), 1000):
        part = rows[start:start + 1000]
        with queue.engine.begin() as conn:
            conn.execute(CachedPrediction.__table__.insert(), [
                dict(cache_key=r.cache_key, ls_task_id=r.ls_task_id, model_version="bench",
                     result_json=_result_json(kb, rng), created_at=now) for r in part])
            conn.execute(update(JobTask).where(JobTask.id.in_([r.id for r in part])).values(
                status="done", model_version="bench", finished_at=now, finished_by="bench",
                push_status="pending", attempts=1))
    pending = _db_bytes(queue) - base
    with queue.engine.begin() as conn:  # what mark_pushes does for confirmed pushes
        conn.execute(update(JobTask).where(JobTask.job_id == job).values(push_status="pushed"))
        conn.execute(CachedPrediction.__table__.delete())
    pushed = _db_bytes(queue) - base
    with queue.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == job).values(status="done",
                                                            updated_at=now - 86400))
    report = queue.purge(3600)
    purged = _db_bytes(queue) - base
    return {"tasks": n, "result_kb": kb, "pending_push_b": pending / n, "pushed_b": pushed / n,
            "purged_b": purged / n, "purged_rows": report.tasks}


def run(url: str, n: int, workers: int, seconds: float, batch: int, size_tasks: int,
        result_kb: int, engine_ms: float = 0.0) -> None:
    queue = _queue(url)
    print(f"database: {queue.dialect}; {n:,} tasks; {workers} worker processes; batch {batch}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    _job, enqueue_s = bench_enqueue(queue, n)
    print(f"enqueue {n:,} tasks: {enqueue_s:.1f} s ({n / enqueue_s:,.0f} tasks/s)")
    if queue.dialect == "postgresql":
        _settle(queue)
    plan = claim_plan(queue)
    if plan:
        index = "ix_prelabel_tasks_queued" if "ix_prelabel_tasks_queued" in plan else "NO INDEX"
        print(f"claim query on the server at {n:,} rows (EXPLAIN ANALYZE): {_executed_ms(plan)}, "
              f"walks {index}; without the partial index: "
              f"{_executed_ms(claim_plan(queue, without_index=True))}")
    _reset_statement_stats(queue)
    claims = bench_claims(url, workers, seconds, batch)
    server = _statement_stats(queue)
    print(f"claim latency ({claims['claims']:,} claims of {batch}, {workers} processes, "
          f"{n:,} queued): p50 {claims['claim_p50_ms']:.2f} ms, "
          f"p99 {claims['claim_p99_ms']:.2f} ms")
    print(f"queue's own cost (engine returns at once): {claims['queue_ms_per_task']:.2f} ms per "
          f"task per worker (record {claims['record_per_task_ms']:.2f} ms/task); "
          f"{claims['tasks_per_s']:,.0f} tasks/s over {workers} workers")
    if server:
        for name, (calls, mean, peak) in server.items():
            print(f"  database's own time per {name} statement (pg_stat_statements, {calls:,} "
                  f"calls): mean {mean:.3f} ms, max {peak:.2f} ms")
    if engine_ms > 0:
        paced = bench_claims(url, workers, seconds, batch, engine_ms / 1000)
        print(f"claim latency with each worker spending {engine_ms:g} ms per task between its "
              f"claims, as a model would ({paced['claims']:,} claims): p50 "
              f"{paced['claim_p50_ms']:.2f} ms, p99 {paced['claim_p99_ms']:.2f} ms")
    for name, (p50, p99) in bench_periodic(queue).items():
        print(f"{name} at {n:,} rows: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    size = bench_size(url, size_tasks, result_kb)
    print(f"database size per finished task ({size['tasks']:,} tasks, ~{result_kb} KB results, "
          f"after VACUUM FULL): push pending {size['pending_push_b'] / 1024:.1f} KB, pushed "
          f"(result dropped) {size['pushed_b'] / 1024:.2f} KB, after purge "
          f"{size['purged_b'] / 1024:.2f} KB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="claiming time per worker")
    parser.add_argument("--batch", type=int, default=4, help="tasks per claim")
    parser.add_argument("--size-tasks", type=int, default=20_000)
    parser.add_argument("--result-kb", type=int, default=20)
    parser.add_argument("--engine-ms", type=float, default=25.0,
                        help="also time claims with workers that spend this long per task "
                             "(cores not saturated); 0: skip")
    parser.add_argument("--db-url", help="use this database (default: a throwaway PostgreSQL)")
    args = parser.parse_args(argv)
    if args.db_url:
        context = contextlib.nullcontext(args.db_url)
    else:
        from .pg import throwaway_postgres

        context = throwaway_postgres(("shared_preload_libraries=pg_stat_statements",))
    with context as url:
        run(url, args.tasks, args.workers, args.seconds, args.batch, args.size_tasks,
            args.result_kb, args.engine_ms)


if __name__ == "__main__":
    main()
