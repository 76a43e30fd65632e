"""initial schema: entries, aliases, exemplars, embeddings cache, imports, annotations

Revision ID: 0001
Revises:
Create Date: 2026-11-22 02:56:22.687870
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('annotations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ls_key', sa.String(length=255), nullable=False),
    sa.Column('updated_at', sa.String(length=64), nullable=False),
    sa.Column('project', sa.String(length=64), nullable=False),
    sa.Column('task', sa.String(length=64), nullable=False),
    sa.Column('annotator', sa.String(length=255), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('ls_key', name='uq_annotations_ls_key')
    )
    op.create_table('entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('norm', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('support', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('merged_into_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_seq', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['merged_into_id'], ['entries.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('kind', 'norm', name='uq_entries_kind_norm')
    )
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.create_index('ix_entries_status', ['status'], unique=False)
        batch_op.create_index('ix_entries_updated_seq', ['updated_seq'], unique=False)

    op.create_table('import_sources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('checksum', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('records_done', sa.BigInteger(), nullable=False),
    sa.Column('completed', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('checksum', 'kind', name='uq_import_sources_checksum')
    )
    op.create_table('index_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('encoder_id', sa.String(length=255), nullable=False),
    sa.Column('version', sa.String(length=255), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('snapshot_hash', sa.String(length=64), nullable=False),
    sa.Column('db_version', sa.BigInteger(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('manifest', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('store_meta',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('db_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.execute(sa.text("INSERT INTO store_meta (id, db_version) VALUES (1, 0)"))
    op.create_table('text_embeddings',
    sa.Column('encoder_id', sa.String(length=255), nullable=False),
    sa.Column('text_hash', sa.String(length=64), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('encoder_id', 'text_hash')
    )
    op.create_table('aliases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('norm', sa.Text(), nullable=False),
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['entry_id'], ['entries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('norm', 'entry_id', name='uq_aliases_norm_entry')
    )
    op.create_table('exemplars',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('encoder_id', sa.String(length=255), nullable=False),
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=False),
    sa.Column('provenance', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['entry_id'], ['entries.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.create_index('ix_exemplars_encoder', ['encoder_id'], unique=False)

    op.create_table('annotation_effects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('annotation_id', sa.Integer(), nullable=False),
    sa.Column('entry_id', sa.Integer(), nullable=False),
    sa.Column('alias_id', sa.Integer(), nullable=True),
    sa.Column('exemplar_id', sa.Integer(), nullable=True),
    sa.Column('created_entry', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['alias_id'], ['aliases.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['annotation_id'], ['annotations.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['entry_id'], ['entries.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['exemplar_id'], ['exemplars.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('annotation_effects', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_annotation_effects_annotation_id'), ['annotation_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('annotation_effects', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_annotation_effects_annotation_id'))

    op.drop_table('annotation_effects')
    with op.batch_alter_table('exemplars', schema=None) as batch_op:
        batch_op.drop_index('ix_exemplars_encoder')

    op.drop_table('exemplars')
    op.drop_table('aliases')
    op.drop_table('text_embeddings')
    op.drop_table('store_meta')
    op.drop_table('index_versions')
    op.drop_table('import_sources')
    with op.batch_alter_table('entries', schema=None) as batch_op:
        batch_op.drop_index('ix_entries_updated_seq')
        batch_op.drop_index('ix_entries_status')

    op.drop_table('entries')
    op.drop_table('annotations')
