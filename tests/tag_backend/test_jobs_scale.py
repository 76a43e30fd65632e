"""The queue at project scale: enqueue past the bind-parameter limit, the partial indexes the
periodic queries read, results stored once, purge, the 0003 migration, oversized /predict."""
from __future__ import annotations

import json
import time

import pytest
from jobs_fixtures import jobs_db_url, jobs_store, make_queue, tasks  # noqa: F401
from sqlalchemy import event, inspect, literal_column, select, text

from tag_backend.jobs.schema import CachedPrediction, Job, JobTask

ITEM = {"result": [], "score": 0.5, "model_version": "v1"}


def _job(queue, n, **kw):
    return queue.create_job("prelabel", tasks(n), label_config="<View/>", model_version="v1",
                            project_id=kw.pop("project_id", 7),
                            keys=[f"key{i}" for i in range(1, n + 1)], **kw)


def test_enqueue_beyond_the_bind_parameter_limit_is_chunked_and_idempotent(jobs_store):
    """70,000 tasks (one bind parameter per task used to exceed PostgreSQL's 65,535)."""
    queue = make_queue(jobs_store)
    job = _job(queue, 70_000)
    assert queue.progress(job).total == 70_000
    assert queue.add_tasks(job, tasks(70_010)[69_990:]) == 10  # only the new ones
    assert queue.progress(job).total == 70_010
    first = queue.claim("w", 3)
    assert [c.ls_task_id for c in first] == [1, 2, 3]


def test_a_large_enqueue_refreshes_the_planner_statistics(jobs_store, monkeypatch):
    """On PostgreSQL the task table is analyzed after a large enqueue, so the first claims are
    planned on the queued-task index, not as a sort of every new row (no ANALYZE on SQLite)."""
    from tag_backend.jobs import queue as queue_module

    queue = make_queue(jobs_store)
    analyzed = []
    monkeypatch.setattr(queue_module, "ANALYZE_MIN_ROWS", 100)
    monkeypatch.setattr(queue_module, "ENQUEUE_CHUNK", 100)
    real = queue._analyze_tasks
    monkeypatch.setattr(queue, "_analyze_tasks", lambda: analyzed.append(1) or real())
    _job(queue, 50)
    assert analyzed == []  # small jobs leave it to autovacuum
    job = _job(queue, 350)  # after the first chunk, then at the end
    assert analyzed == [1, 1]
    if queue.dialect == "postgresql":
        with queue.engine.connect() as conn:
            reltuples = conn.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'prelabel_tasks'"))
            rows = conn.scalar(select(text("count(*)")).select_from(JobTask))
        assert reltuples == rows  # ANALYZE read the whole (small) table
    assert [c.ls_task_id for c in queue.claim("w", 2)] == [1, 2] and queue.progress(job).total == 350


def _engines(queue):
    """The queue's engines: the store's and, on PostgreSQL, its single-statement engine."""
    return [queue.engine] + ([queue.statement_engine] if queue.statement_engine else [])


def _statements(engines, run):
    """(SQL, parameters) of every statement ``run()`` sends through ``engines``."""
    seen = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if not executemany:
            seen.append((statement, parameters))

    for engine in engines:
        event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", capture)
    return seen


def _plan(conn, dialect, statement, parameters) -> str:
    if dialect == "postgresql":
        rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
    else:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return "\n".join(str(r[-1]) for r in rows)


def test_periodic_queries_read_partial_indexes_not_the_task_table(jobs_store):
    """Claim, heartbeat, lease expiry, settling, depth, push claims and key lookups each use a
    partial index: no plan scans prelabel_tasks as a whole (PostgreSQL is told to avoid
    sequential scans, so only a missing or unusable index shows up as one)."""
    from tag_backend.jobs.push_queue import claim_pushes

    queue = make_queue(jobs_store)
    job = _job(queue, 50)
    done = queue.claim("w", 5)
    for claim in done[:3]:
        queue.complete(claim, "w", ITEM, f"key{claim.ls_task_id}")
    engine = jobs_store.engine
    calls = {
        "claim": lambda: queue.claim("x", 2),
        "heartbeat": lambda: queue.heartbeat("w"),
        "expire": queue.expire_leases,
        "settle": queue.finish_settled_jobs,
        "depth": lambda: (setattr(queue, "_depth", None), queue.depth()),
        "push claim": lambda: claim_pushes(queue, "p", 2),
        "pending keys": lambda: queue.pending_keys(["key9", "key10"]),
        "failures": lambda: queue.failures(job),
    }
    dialect = engine.dialect.name
    for name, run in calls.items():
        statements = [(s, p) for s, p in _statements(_engines(queue), run)
                      if "prelabel_tasks" in s and not s.lstrip().upper().startswith(
                          ("SAVEPOINT", "RELEASE"))]
        assert statements, name
        with engine.connect() as conn:
            if dialect == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")
            for statement, parameters in statements:
                if "WHERE prelabel_tasks.id" in statement and "IN" not in statement:
                    continue  # by primary key
                plan = _plan(conn, dialect, statement, parameters)
                if dialect == "postgresql":
                    assert "Seq Scan on prelabel_tasks" not in plan, (name, statement, plan)
                else:  # a SCAN (even of an index) reads the whole table; SEARCH is a lookup
                    assert not any(line.strip().startswith("SCAN prelabel_tasks")
                                   for line in plan.splitlines()), (name, statement, plan)


def test_claims_and_records_are_one_statement_each_and_only_records_wait_for_the_flush(
        jobs_store):
    """On PostgreSQL a claim (of a job this process already runs), a heartbeat and a record
    are one autocommit statement each (one round trip); the claim and the heartbeat turn
    ``synchronous_commit`` off for their own transaction only, the record keeps the durable
    default. On SQLite a claim is one statement in the store's write transaction."""
    queue = make_queue(jobs_store)
    _job(queue, 20)
    engine = jobs_store.engine
    postgres = engine.dialect.name == "postgresql"
    queue.claim("w", 1)  # the job's first claim also reads its config and marks it running
    engines = _engines(queue)
    claim_sql = _statements(engines, lambda: queue.claim("w", 2))
    assert len(claim_sql) == (1 if postgres else 2)  # SQLite: + BEGIN IMMEDIATE
    heartbeat_sql = _statements(engines, lambda: queue.heartbeat("w"))
    (claim,) = queue.claim("w", 1)
    record_sql = _statements(engines, lambda: queue.complete(claim, "w", ITEM, "key-r"))
    assert len(record_sql) == (1 if postgres else 3)  # SQLite: BEGIN IMMEDIATE, task, result

    def unflushed(statements):
        return [s for s, p in statements if "set_config" in s
                and "synchronous_commit" in json.dumps(p, default=str)
                and "off" in json.dumps(p, default=str)]

    if not postgres:
        assert not unflushed(claim_sql + heartbeat_sql + record_sql)
        return
    assert len(unflushed(claim_sql)) == 1 and len(unflushed(heartbeat_sql)) == 1
    assert not unflushed(record_sql)
    pooled = [e.connect() for e in engines for _ in range(e.pool.checkedin())]
    try:  # every pooled connection (the claim's among them) keeps the durable default
        assert {c.exec_driver_sql("SHOW synchronous_commit").scalar() for c in pooled} == {"on"}
    finally:
        for conn in pooled:
            conn.close()
    modes = []

    def mode(conn, *_args):
        modes.append(conn.connection.dbapi_connection.autocommit)

    (claim,) = queue.claim("w", 1)
    for e in engines:
        event.listen(e, "before_cursor_execute", mode)
    try:
        queue.claim("w", 1)
        queue.heartbeat("w")
        queue.complete(claim, "w", ITEM, "key-s")
    finally:
        for e in engines:
            event.remove(e, "before_cursor_execute", mode)
    assert modes == [True, True, True]  # each its own transaction: no BEGIN/COMMIT round trips
    assert queue.cached(["key-r", "key-s"]).keys() == {"key-r", "key-s"}


def test_a_result_is_stored_once(jobs_store):
    queue = make_queue(jobs_store)
    _job(queue, 2)
    (claim,) = queue.claim("w", 1)
    assert queue.complete(claim, "w", ITEM, "other-key")  # the worker's key wins
    columns = {c["name"] for c in inspect(jobs_store.engine).get_columns("prelabel_tasks")}
    assert "result_json" not in columns
    with jobs_store.engine.connect() as conn:
        key = conn.scalar(select(JobTask.cache_key).where(JobTask.id == claim.row_id))
        stored = conn.execute(select(CachedPrediction.result_json)).scalars().all()
    assert key == "other-key" and [json.loads(s) for s in stored] == [ITEM]
    assert queue.cached(["other-key"]) == {"other-key": ITEM}
    with pytest.raises(Exception):
        queue.complete(claim, "w", ITEM, "")


def test_purge_deletes_old_finished_work_only(jobs_store):
    queue = make_queue(jobs_store)
    old = _job(queue, 30, project_id=1)
    for claim in queue.claim("w", 30):
        queue.complete(claim, "w", ITEM, f"old{claim.ls_task_id}")
    active = _job(queue, 4, project_id=2)
    (claim,) = queue.claim("w", 1)
    queue.complete(claim, "w", ITEM, "pending-push")  # done, push pending: still needed
    queue.cancel(old)
    with jobs_store.engine.begin() as conn:  # both jobs and every result are a day old
        conn.execute(Job.__table__.update().values(updated_at=time.time() - 86400))
        conn.execute(CachedPrediction.__table__.update().values(created_at=time.time() - 86400))
    assert queue.purge(7 * 86400) == (0, 0, 0)  # nothing is a week old
    report = queue.purge(3600)
    assert (report.jobs, report.tasks, report.predictions) == (1, 30, 30)
    assert queue.progress(active).total == 4
    assert set(queue.cached(["pending-push"])) == {"pending-push"}
    with pytest.raises(Exception):
        queue.get_job(old)


def test_migration_jobs_0002_moves_results_and_replaces_the_indexes(store):
    from jobs_fixtures import previous_release_tables

    from tag_backend.jobs.schema import upgrade_job_tables

    engine = store.engine
    previous_release_tables(engine)  # jobs_0001's tables: result_json, full-table indexes
    row = dict(job_id=1, ls_task_id=5, position=0, task_json="{}", cache_key="k5",
               status="done", attempts=1, next_at=0.0, error="", model_version="v",
               result_json='{"result": [], "score": 1}', push_status="pending",
               push_attempts=0, push_next_at=0.0, push_error="")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO prelabel_jobs (id, kind, status, model_version, "
                          "label_config, push, created_at, updated_at, created_by, note) "
                          "VALUES (1, 'prelabel', 'running', 'v', '', 1, 0, 0, '', '')"))
        conn.execute(text(f"INSERT INTO prelabel_tasks ({', '.join(row)}) "
                          f"VALUES ({', '.join(':' + k for k in row)})"), row)
    upgrade_job_tables(engine)
    indexes = {i["name"] for i in inspect(engine).get_indexes("prelabel_tasks")}
    assert {"ix_prelabel_tasks_queued", "ix_prelabel_tasks_lease_owner",
            "ix_prelabel_tasks_push_pending"} <= indexes
    assert not {"ix_prelabel_tasks_claim", "ix_prelabel_tasks_push"} & indexes
    assert "webhook_events" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT cache_key, result_json FROM prelabel_predictions")
                            ).all() == [("k5", '{"result": [], "score": 1}')]


def test_oversized_predict_becomes_a_job(tiny_settings):
    """More than 10,000 tasks: nothing computed inline, one item ([]) per task, one job."""
    from tag_backend.app import app_backend, create_app
    from tag_backend.ls import recommended_label_config
    from tag_backend.ls.protocol import MAX_TASKS_PER_REQUEST

    n = MAX_TASKS_PER_REQUEST + 1
    app = create_app(tiny_settings, start_worker=False)
    services = app_backend(app).services
    body = {"tasks": [{"id": i, "data": {"image": f"/missing/{i}.png"}} for i in range(n)],
            "label_config": recommended_label_config(), "project": "3.1700000000"}
    try:
        reply = app.test_client().post("/predict", json=body)
        assert reply.status_code == 200
        assert reply.json["results"] == [[]] * n
        (job,) = services.jobs.queue.list_jobs()
        assert job.kind == "predict" and services.jobs.queue.progress(job.id).total == n
    finally:
        services.close()


def _postgres_queue(jobs_store):
    queue = make_queue(jobs_store)
    if queue.dialect != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no plan cache and no connections to lose")
    return queue


def test_postgresql_keeps_one_plan_for_the_claim_and_it_walks_the_queued_index(jobs_store):
    """A prepared claim is planned a few times, then PostgreSQL keeps one plan for any ``now``
    (no planning per claim); that plan walks ``ix_prelabel_tasks_queued``."""
    queue = _postgres_queue(jobs_store)
    _job(queue, 50_000)  # big enough for the estimates to differ (the enqueue runs ANALYZE)
    for _ in range(15):  # psycopg prepares after 5 runs, PostgreSQL compares 5 plans more
        queue.claim("w", 2)
    with queue.statement_engine.connect() as conn:  # one thread: the pool's one connection
        generic, custom = conn.execute(text(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements "
            "WHERE statement LIKE 'WITH picked AS MATERIALIZED%'")).one()
    assert generic >= 4 and custom <= 5, (generic, custom)
    pick = queue._claimable(literal_column("$1")).limit(2).with_for_update(skip_locked=True)
    sql = str(pick.compile(dialect=queue.engine.dialect, compile_kwargs={"literal_binds": True}))
    with queue.engine.connect() as conn:
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql("SET enable_sort = off")  # a small table is cheaper to sort
        conn.exec_driver_sql(f"PREPARE pick(float8) AS {sql}")
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN EXECUTE pick(0)"))
        conn.rollback()
    assert "ix_prelabel_tasks_queued" in plan and "Sort" not in plan, plan


def test_a_lost_database_connection_costs_no_failed_claim_heartbeat_or_record(jobs_store):
    """The single-statement connections are not pinged before use: when the server ended one
    (a restart, an idle connection dropped), the statement runs again on a new connection."""
    queue = _postgres_queue(jobs_store)
    _job(queue, 10)

    def end_the_statement_connection():
        with queue.statement_engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with queue.engine.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar()
        time.sleep(0.2)  # the server has closed it; the pool does not know

    (first,) = queue.claim("w", 1)
    end_the_statement_connection()
    (second,) = queue.claim("w", 1)
    assert second.ls_task_id == first.ls_task_id + 1  # nothing claimed twice or skipped
    end_the_statement_connection()
    assert queue.heartbeat("w") == 2
    end_the_statement_connection()
    assert queue.complete(first, "w", ITEM, "key-first")
    assert queue.cached(["key-first"]) == {"key-first": ITEM}
