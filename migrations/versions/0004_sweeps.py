"""sweeps: sparsity sweeps and their points, linked to their SAEs

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
   
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=True),
    sa.Column('layer', sa.Integer(), nullable=True),
    sa.Column('site', sa.String(length=20), nullable=True),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('budget', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('plots', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps')),
    sa.UniqueConstraint('name', name=op.f('uq_sweeps_name'))
    )
    op.create_table('sweep_points',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('sae_id', sa.Integer(), nullable=True),
    sa.Column('architecture', sa.String(length=20), nullable=False),
    sa.Column('knob', sa.String(length=20), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('metrics', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('train_seconds', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['sae_id'], ['saes.id'], name=op.f('fk_sweep_points_sae_id_saes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], name=op.f('fk_sweep_points_sweep_id_sweeps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweep_points')),
    sa.UniqueConstraint('sweep_id', 'architecture', 'value', name='uq_sweep_points_point')
    )
    with op.batch_alter_table('sweep_points', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_sweep_points_sae_id'), ['sae_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_sweep_points_sweep_id'), ['sweep_id'], unique=False)



def downgrade() -> None:
   
    with op.batch_alter_table('sweep_points', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_sweep_points_sweep_id'))
        batch_op.drop_index(batch_op.f('ix_sweep_points_sae_id'))

    op.drop_table('sweep_points')
    op.drop_table('sweeps')
