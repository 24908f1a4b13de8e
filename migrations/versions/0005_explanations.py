"""explanations: held-out examples, the context reservoir, explanations and their scores, explain jobs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27

- examples.split: 'shown' (every existing row) or 'heldout' (only scores explanations);
- index_contexts: random context windows of an index run with the features firing in each;
- explanations and explanation_scores (app.interp);
- jobs.kind may be 'explain'.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def _job_kinds(kinds: str) -> None:
    # SQLite cannot alter a CHECK constraint: batch mode copies the table with the new one
    # (reflection does not see CHECK constraints there, so the old one is named to drop it).
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_jobs_kind'), type_='check')
        batch_op.create_check_constraint(op.f('ck_jobs_kind'), f"kind IN {kinds}")


def upgrade() -> None:
    # A plain ADD COLUMN on every backend (no table copy on SQLite): existing examples are the shown ones.
    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.add_column(sa.Column('split', sa.String(length=10), server_default='shown', nullable=False))

    op.create_table('index_contexts',
    sa.Column('id', BIG_ID, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('token_ids', sa.LargeBinary(), nullable=False),
    sa.Column('fired', sa.LargeBinary(), nullable=False),
    sa.Column('document', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['index_runs.id'], name=op.f('fk_index_contexts_run_id_index_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_index_contexts'))
    )
    with op.batch_alter_table('index_contexts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_index_contexts_run_id'), ['run_id'], unique=False)

    op.create_table('explanations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('feature_index', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('llm', sa.String(length=300), nullable=False),
    sa.Column('prompt_version', sa.String(length=50), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('shown', JSON, nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('ok', 'failed', 'error')", name=op.f('ck_explanations_status')),
    sa.ForeignKeyConstraint(['run_id'], ['index_runs.id'], name=op.f('fk_explanations_run_id_index_runs'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['sae_id'], ['saes.id'], name=op.f('fk_explanations_sae_id_saes'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_explanations')),
    sa.UniqueConstraint('sae_id', 'feature_index', 'llm', 'prompt_version', name='uq_explanations_attempt')
    )
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_explanations_run_id'), ['run_id'], unique=False)

    op.create_table('explanation_scores',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('explanation_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('n', sa.Integer(), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('scored', JSON, nullable=False),
    sa.Column('raw', JSON, nullable=False),
    sa.Column('llm', sa.String(length=300), nullable=False),
    sa.Column('prompt_version', sa.String(length=50), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('simulation', 'detection', 'fuzzing')", name=op.f('ck_explanation_scores_kind')),
    sa.ForeignKeyConstraint(['explanation_id'], ['explanations.id'], name=op.f('fk_explanation_scores_explanation_id_explanations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_explanation_scores')),
    sa.UniqueConstraint('explanation_id', 'kind', name='uq_explanation_scores_kind')
    )

    _job_kinds("('train', 'index', 'explain')")


def downgrade() -> None:
    op.execute("DELETE FROM jobs WHERE kind = 'explain'")
    _job_kinds("('train', 'index')")
    op.drop_table('explanation_scores')
    with op.batch_alter_table('explanations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_explanations_run_id'))
    op.drop_table('explanations')
    with op.batch_alter_table('index_contexts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_index_contexts_run_id'))
    op.drop_table('index_contexts')
    # Held-out examples only exist for scoring; without the column they would show on the pages.
    op.execute("DELETE FROM examples WHERE split = 'heldout'")
    with op.batch_alter_table('examples', schema=None) as batch_op:
        batch_op.drop_column('split')
