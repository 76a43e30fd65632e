"""learning indexes: live exemplars per encoder counted from an index, aliases by count

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:00:00
"""
from __future__ import annotations

from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.drop_index('ix_exemplars_encoder')
        batch_op.create_index('ix_exemplars_encoder_removed', ['encoder_id', 'removed'],
                              unique=False)
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.create_index('ix_aliases_count', ['count'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.drop_index('ix_aliases_count')
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.drop_index('ix_exemplars_encoder_removed')
        batch_op.create_index('ix_exemplars_encoder', ['encoder_id'], unique=False)
