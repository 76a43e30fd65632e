"""learning: exemplar serving state, knowledge releases, served predictions, concept changes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 01:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.add_column(sa.Column('served', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column('removed', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('served_seq', sa.BigInteger(), nullable=False,
                                      server_default='0'))
        batch_op.create_index('ix_exemplars_served_seq', ['served_seq'], unique=False)
        batch_op.create_index('ix_exemplars_entry', ['entry_id'], unique=False)
    with op.batch_alter_table('annotation_effects', schema=None) as batch_op:
        batch_op.add_column(sa.Column('predicted_entry_id', sa.Integer(), nullable=True))
    op.create_table(
        'knowledge_releases',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('db_seq', sa.BigInteger(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('source', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('number', name='uq_knowledge_releases_number'),
    )
    op.create_table(
        'served_predictions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('project', sa.String(length=64), nullable=False),
        sa.Column('task', sa.String(length=64), nullable=False),
        sa.Column('model_version', sa.String(length=255), nullable=False),
        sa.Column('knowledge_seq', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_served_predictions_task', 'served_predictions', ['project', 'task'])
    op.create_table(
        'predicted_regions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('prediction_id', sa.Integer(), nullable=False),
        sa.Column('region_id', sa.String(length=64), nullable=False),
        sa.Column('entry_id', sa.Integer(), nullable=True),
        sa.Column('name', sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(['prediction_id'], ['served_predictions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_predicted_regions_prediction_id', 'predicted_regions', ['prediction_id'])
    op.create_index('ix_predicted_regions_region', 'predicted_regions', ['region_id'])
    op.create_index('ix_predicted_regions_entry', 'predicted_regions', ['entry_id'])
    op.create_table(
        'concept_changes',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('entry_id', sa.Integer(), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_concept_changes_entry_seq', 'concept_changes', ['entry_id', 'seq'])


def downgrade() -> None:
    op.drop_table('concept_changes')
    op.drop_table('predicted_regions')
    op.drop_table('served_predictions')
    op.drop_table('knowledge_releases')
    with op.batch_alter_table('annotation_effects', schema=None) as batch_op:
        batch_op.drop_column('predicted_entry_id')
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.drop_index('ix_exemplars_entry')
        batch_op.drop_index('ix_exemplars_served_seq')
        batch_op.drop_column('served_seq')
        batch_op.drop_column('removed')
        batch_op.drop_column('served')
