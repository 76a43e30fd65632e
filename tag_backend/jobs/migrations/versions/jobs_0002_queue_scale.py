"""pre-labelling queue at scale: partial indexes, results stored once; webhook_events

* The claim, lease (heartbeat/expiry), push, active-key and failure queries each get a partial
  index over the rows they touch, replacing the full-table indexes of jobs_0001 (which grew
  with every finished task and did not match the claim's ``ORDER BY job_id, position``).
* ``prelabel_tasks.result_json`` is dropped: a result is stored once, in
  ``prelabel_predictions`` under the task's ``cache_key``. Results only held by a task row are
  copied there first.
* ``webhook_events``: the webhook queue shared by replicas on PostgreSQL
  (``tag_backend.ls.webhook_db_queue``), ordered per annotation; a table of the backend's
  background work like the job tables, so it shares their history.

Revision ID: jobs_0002
Revises: jobs_0001
Create Date: 2026-12-02 01:10:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'jobs_0002'
down_revision = 'jobs_0001'
branch_labels = None
depends_on = None

# The predicates are repeated here on purpose: a migration must not change when the
# application's schema module evolves.
_PARTIAL = (
    ('ix_prelabel_tasks_queued', ['job_id', 'position'], "status = 'queued'"),
    ('ix_prelabel_tasks_lease_owner', ['lease_owner'], "lease_owner IS NOT NULL"),
    ('ix_prelabel_tasks_lease_expiry', ['lease_expires_at'], "lease_owner IS NOT NULL"),
    ('ix_prelabel_tasks_push_pending', ['job_id', 'push_next_at'], "push_status = 'pending'"),
    ('ix_prelabel_tasks_active_key', ['cache_key'],
     "status IN ('queued', 'running') OR push_status IN ('pending', 'pushing')"),
    ('ix_prelabel_tasks_problems', ['job_id', 'position'],
     "status = 'failed' OR push_status IN ('failed', 'gone')"),
)


def upgrade() -> None:
    op.execute(
        "INSERT INTO prelabel_predictions (cache_key, ls_task_id, model_version, result_json, "
        "created_at) "
        "SELECT t.cache_key, MIN(t.ls_task_id), MIN(t.model_version), MIN(t.result_json), "
        "MIN(COALESCE(t.finished_at, 0)) FROM prelabel_tasks t "
        "WHERE t.result_json IS NOT NULL AND t.cache_key <> '' AND NOT EXISTS ("
        "SELECT 1 FROM prelabel_predictions p WHERE p.cache_key = t.cache_key) "
        "GROUP BY t.cache_key")
    op.drop_index('ix_prelabel_tasks_claim', table_name='prelabel_tasks')
    op.drop_index('ix_prelabel_tasks_push', table_name='prelabel_tasks')
    op.drop_index('ix_prelabel_tasks_owner', table_name='prelabel_tasks')
    with op.batch_alter_table('prelabel_tasks') as batch:
        batch.drop_column('result_json')
    for name, columns, where in _PARTIAL:
        op.create_index(name, 'prelabel_tasks', columns, postgresql_where=sa.text(where),
                        sqlite_where=sa.text(where))
    op.create_index('ix_prelabel_predictions_created', 'prelabel_predictions', ['created_at'])
    op.create_table(
        'webhook_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('order_key', sa.String(length=80), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('payload_json', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('due_at', sa.Float(), nullable=False),
        sa.Column('lease_owner', sa.String(length=64), nullable=True),
        sa.Column('lease_expires_at', sa.Float(), nullable=True),
        sa.Column('error', sa.Text(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    active = "status IN ('pending', 'working')"
    op.create_index('ix_webhook_events_active', 'webhook_events', ['order_key', 'id'],
                    postgresql_where=sa.text(active), sqlite_where=sa.text(active))


def downgrade() -> None:
    op.drop_index('ix_webhook_events_active', table_name='webhook_events')
    op.drop_table('webhook_events')
    op.drop_index('ix_prelabel_predictions_created', table_name='prelabel_predictions')
    for name, _columns, _where in _PARTIAL:
        op.drop_index(name, table_name='prelabel_tasks')
    with op.batch_alter_table('prelabel_tasks') as batch:
        batch.add_column(sa.Column('result_json', sa.Text(), nullable=True))
    op.execute(
        "UPDATE prelabel_tasks SET result_json = (SELECT p.result_json FROM prelabel_predictions p "
        "WHERE p.cache_key = prelabel_tasks.cache_key) WHERE status = 'done'")
    op.create_index('ix_prelabel_tasks_claim', 'prelabel_tasks', ['status', 'next_at'])
    op.create_index('ix_prelabel_tasks_push', 'prelabel_tasks', ['push_status', 'push_next_at'])
    op.create_index('ix_prelabel_tasks_owner', 'prelabel_tasks', ['lease_owner'])
