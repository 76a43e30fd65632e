"""no change to the concept store (formerly: the pre-labelling job tables)

This revision used to create the tables of the engine's job queue. They are owned by the job
engine's own migrations now (version table ``tag_jobs_alembic_version``), which adopt the tables
this revision created in existing databases. The revision stays so that databases recorded at
0002 keep a known revision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:40:00
"""
from __future__ import annotations

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
