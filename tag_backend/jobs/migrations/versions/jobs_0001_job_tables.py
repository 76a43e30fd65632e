"""job-queue tables: prelabel_jobs, prelabel_tasks, prelabel_predictions

Databases whose concept store was migrated to its revision 0002 by an earlier release already
hold these tables (that revision used to create them): existing tables are adopted as they are
(same definitions), only missing ones are created.

Revision ID: jobs_0001
Revises:
Create Date: 2026-12-02 01:30:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = 'jobs_0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if 'prelabel_jobs' not in existing:
        op.create_table(
            'prelabel_jobs',
            sa.Column('id', sa.Integer(), nullable=False),
            sa.Column('kind', sa.String(length=16), nullable=False),
            sa.Column('project_id', sa.BigInteger(), nullable=True),
            sa.Column('status', sa.String(length=16), nullable=False),
            sa.Column('model_version', sa.Text(), nullable=False),
            sa.Column('label_config', sa.Text(), nullable=False),
            sa.Column('push', sa.Integer(), nullable=False),
            sa.Column('created_at', sa.Float(), nullable=False),
            sa.Column('updated_at', sa.Float(), nullable=False),
            sa.Column('created_by', sa.Text(), nullable=False),
            sa.Column('note', sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint('id'),
        )
        op.create_index('ix_prelabel_jobs_project_status', 'prelabel_jobs', ['project_id', 'status'])
    if 'prelabel_tasks' not in existing:
        op.create_table(
            'prelabel_tasks',
            sa.Column('id', sa.Integer(), nullable=False),
            sa.Column('job_id', sa.Integer(), nullable=False),
            sa.Column('ls_task_id', sa.BigInteger(), nullable=False),
            sa.Column('position', sa.Integer(), nullable=False),
            sa.Column('task_json', sa.Text(), nullable=False),
            sa.Column('cache_key', sa.String(length=64), nullable=False),
            sa.Column('status', sa.String(length=16), nullable=False),
            sa.Column('attempts', sa.Integer(), nullable=False),
            sa.Column('next_at', sa.Float(), nullable=False),
            sa.Column('lease_owner', sa.String(length=64), nullable=True),
            sa.Column('lease_expires_at', sa.Float(), nullable=True),
            sa.Column('error', sa.Text(), nullable=False),
            sa.Column('model_version', sa.Text(), nullable=False),
            sa.Column('result_json', sa.Text(), nullable=True),
            sa.Column('finished_at', sa.Float(), nullable=True),
            sa.Column('finished_by', sa.String(length=64), nullable=True),
            sa.Column('push_status', sa.String(length=16), nullable=True),
            sa.Column('push_attempts', sa.Integer(), nullable=False),
            sa.Column('push_next_at', sa.Float(), nullable=False),
            sa.Column('push_error', sa.Text(), nullable=False),
            sa.ForeignKeyConstraint(['job_id'], ['prelabel_jobs.id'], ondelete='CASCADE'),
            sa.PrimaryKeyConstraint('id'),
            sa.UniqueConstraint('job_id', 'ls_task_id', name='uq_prelabel_tasks_job_task'),
        )
        op.create_index('ix_prelabel_tasks_claim', 'prelabel_tasks', ['status', 'next_at'])
        op.create_index('ix_prelabel_tasks_push', 'prelabel_tasks', ['push_status', 'push_next_at'])
        op.create_index('ix_prelabel_tasks_owner', 'prelabel_tasks', ['lease_owner'])
    if 'prelabel_predictions' not in existing:
        op.create_table(
            'prelabel_predictions',
            sa.Column('cache_key', sa.String(length=64), nullable=False),
            sa.Column('ls_task_id', sa.BigInteger(), nullable=False),
            sa.Column('model_version', sa.Text(), nullable=False),
            sa.Column('result_json', sa.Text(), nullable=False),
            sa.Column('created_at', sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint('cache_key'),
        )


def downgrade() -> None:
    op.drop_table('prelabel_predictions')
    op.drop_index('ix_prelabel_tasks_owner', table_name='prelabel_tasks')
    op.drop_index('ix_prelabel_tasks_push', table_name='prelabel_tasks')
    op.drop_index('ix_prelabel_tasks_claim', table_name='prelabel_tasks')
    op.drop_table('prelabel_tasks')
    op.drop_index('ix_prelabel_jobs_project_status', table_name='prelabel_jobs')
    op.drop_table('prelabel_jobs')
