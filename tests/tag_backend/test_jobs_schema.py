"""The job tables' own Alembic history: fresh databases, databases of the previous release (job
tables made by the concept store's former revision 0002), newer revisions refused."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text

from database_tools.errors import SchemaTooNew
from database_tools.migrate import current_revision, head_revision
from tag_backend.jobs.queue import JobQueue
from tag_backend.jobs.schema import JOB_MIGRATIONS, JobsBase, upgrade_job_tables

from jobs_fixtures import previous_release_tables


def _models() -> MetaData:
    """The job models and the webhook queue's table (same migration history)."""
    from tag_backend.ls.webhook_db_queue import metadata as webhook_metadata

    models = MetaData()
    for table in [*JobsBase.metadata.tables.values(), *webhook_metadata.tables.values()]:
        table.to_metadata(models)
    return models


def _job_table_diff(engine) -> list:
    """Differences between the database and the job models, ignoring every other table."""
    models = _models()

    def only_job_tables(name, type_, parent_names) -> bool:
        return type_ != "table" or name in models.tables

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": JOB_MIGRATIONS.version_table, "include_name": only_job_tables})
        return compare_metadata(context, models)


def test_opening_a_queue_creates_exactly_the_job_models(store):
    assert not set(JobsBase.metadata.tables) & set(inspect(store.engine).get_table_names())
    JobQueue.from_store(store)
    assert _job_table_diff(store.engine) == []
    with store.engine.connect() as conn:
        assert current_revision(conn, JOB_MIGRATIONS) == head_revision(JOB_MIGRATIONS)
        assert current_revision(conn) == head_revision()  # the store's history is separate


def test_tables_of_the_previous_release_are_adopted_with_their_rows(store):
    previous_release_tables(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO prelabel_jobs (kind, status, model_version, label_config, push, "
            "created_at, updated_at, created_by, note) "
            "VALUES ('prelabel', 'queued', 'v1', '<View/>', 1, 1.0, 1.0, 'me', '')"))
    upgrade_job_tables(store.engine)
    upgrade_job_tables(store.engine)  # current: nothing to do
    with store.engine.connect() as conn:
        assert current_revision(conn, JOB_MIGRATIONS) == head_revision(JOB_MIGRATIONS)
        assert conn.execute(text("SELECT created_by FROM prelabel_jobs")).scalar_one() == "me"
    assert _job_table_diff(store.engine) == []
    assert JobQueue.from_store(store).create_job("prelabel", [{"id": 1, "data": {}}],
                                                 label_config="<View/>", model_version="v1") == 2


def test_a_newer_job_schema_is_refused(store):
    upgrade_job_tables(store.engine)
    with store.engine.begin() as conn:
        conn.execute(text(f"UPDATE {JOB_MIGRATIONS.version_table} SET version_num = 'jobs_9999'"))
    with pytest.raises(SchemaTooNew, match="job queue schema revision 'jobs_9999' is newer"):
        JobQueue.from_store(store)
