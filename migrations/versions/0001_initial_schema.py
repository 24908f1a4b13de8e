"""initial schema: models, saes, index runs, features, examples, ratings, jobs

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("kind IN ('train', 'index')", name=op.f('ck_jobs_kind')),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_jobs_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status_created', ['status', 'created_at'], unique=False)

    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('n_layers', sa.Integer(), nullable=True),
    sa.Column('d_model', sa.Integer(), nullable=True),
    sa.Column('vocab_size', sa.Integer(), nullable=True),
    sa.Column('vocab', sa.LargeBinary(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models')),
    sa.UniqueConstraint('name', name=op.f('uq_models_name'))
    )
    op.create_table('saes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('layer', sa.Integer(), nullable=True),
    sa.Column('site', sa.String(length=20), nullable=True),
    sa.Column('architecture', sa.String(length=20), nullable=False),
    sa.Column('d_in', sa.Integer(), nullable=False),
    sa.Column('d_sae', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('dtype', sa.String(length=20), nullable=False),
    sa.Column('normalization_scale', sa.Float(), nullable=False),
    sa.Column('context_size', sa.Integer(), nullable=True),
    sa.Column('prepend_bos', sa.Boolean(), nullable=False),
    sa.Column('dataset', sa.String(length=1000), nullable=True),
    sa.Column('tokens_trained', sa.BigInteger(), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('indexed_tokens', sa.BigInteger(), nullable=False),
    sa.Column('index_run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_saes_model_id_models'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_saes')),
    sa.UniqueConstraint('name', name=op.f('uq_saes_name'))
    )
    with op.batch_alter_table('saes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_saes_model_id'), ['model_id'], unique=False)

    op.create_table('index_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.Column('dataset', sa.String(length=1000), nullable=True),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('building', 'complete', 'failed')", name=op.f('ck_index_runs_status')),
    sa.ForeignKeyConstraint(['sae_id'], ['saes.id'], name=op.f('fk_index_runs_sae_id_saes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_index_runs'))
    )
    with op.batch_alter_table('index_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_index_runs_sae_id'), ['sae_id'], unique=False)
    # saes.index_run_id and index_runs.sae_id point at each other: add this one after both exist.
    with op.batch_alter_table('saes', schema=None) as batch_op:
        batch_op.create_foreign_key(
            op.f('fk_saes_index_run_id_index_runs'), 'index_runs', ['index_run_id'], ['id'], ondelete='SET NULL'
        )

    op.create_table('ratings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.Column('feature_index', sa.Integer(), nullable=False),
    sa.Column('rater', sa.String(length=100), nullable=False),
    sa.Column('label', sa.String(length=10), nullable=False),
    sa.Column('note', sa.String(length=2000), nullable=False),
    sa.Column('study_id', sa.String(length=100), nullable=False),
    sa.Column('blinded', sa.Boolean(), nullable=False),
    sa.Column('shown', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('presentation_order', sa.Integer(), nullable=True),
    sa.Column('time_spent_ms', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("label IN ('yes', 'maybe', 'no')", name=op.f('ck_ratings_label')),
    sa.ForeignKeyConstraint(['sae_id'], ['saes.id'], name=op.f('fk_ratings_sae_id_saes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ratings')),
    sa.UniqueConstraint('study_id', 'rater', 'sae_id', 'feature_index', name='uq_ratings_study_rater_feature')
    )
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.create_index('ix_ratings_sae_feature', ['sae_id', 'feature_index'], unique=False)

    op.create_table('features',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('fire_count', sa.BigInteger(), nullable=False),
    sa.Column('frequency', sa.Float(), nullable=False),
    sa.Column('max_activation', sa.Float(), nullable=False),
    sa.Column('mean_activation', sa.Float(), nullable=False),
    sa.Column('histogram', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('top_logits', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('bottom_logits', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('similar', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('search_text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['index_runs.id'], name=op.f('fk_features_run_id_index_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'index', name=op.f('pk_features'))
    )
    with op.batch_alter_table('features', schema=None) as batch_op:
        batch_op.create_index('ix_features_run_frequency', ['run_id', 'frequency'], unique=False)
        batch_op.create_index('ix_features_run_max_activation', ['run_id', 'max_activation'], unique=False)

    op.create_table('examples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('feature_index', sa.Integer(), nullable=False),
    sa.Column('band', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('token_ids', sa.LargeBinary(), nullable=False),
    sa.Column('values', sa.LargeBinary(), nullable=False),
    sa.Column('max_value', sa.Float(), nullable=False),
    sa.Column('max_position', sa.Integer(), nullable=False),
    sa.Column('document', sa.String(length=500), nullable=True),
    sa.Column('band_min', sa.Float(), nullable=True),
    sa.Column('band_max', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id', 'feature_index'], ['features.run_id', 'features.index'], name=op.f('fk_examples_run_id_features'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_examples'))
    )
    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.create_index('ix_examples_feature', ['run_id', 'feature_index', 'band', 'rank'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.drop_index('ix_examples_feature')

    op.drop_table('examples')
    with op.batch_alter_table('features', schema=None) as batch_op:
        batch_op.drop_index('ix_features_run_max_activation')
        batch_op.drop_index('ix_features_run_frequency')

    op.drop_table('features')
    with op.batch_alter_table('ratings', schema=None) as batch_op:
        batch_op.drop_index('ix_ratings_sae_feature')

    op.drop_table('ratings')
    with op.batch_alter_table('saes', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_saes_index_run_id_index_runs'), type_='foreignkey')
    with op.batch_alter_table('index_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_index_runs_sae_id'))

    op.drop_table('index_runs')
    with op.batch_alter_table('saes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_saes_model_id'))

    op.drop_table('saes')
    op.drop_table('models')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status_created')

    op.drop_table('jobs')
