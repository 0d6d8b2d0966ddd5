"""Shrink the prefix to 128 dims: half the index, recall checked with `mrl-pg evaluate`.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from mrl_pg.alembic import MRLPrefix

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PREFIX_256 = MRLPrefix(column="embedding_mrl", full_column="embedding", full_dims=768, dims=256)
PREFIX_128 = MRLPrefix(column="embedding_mrl", full_column="embedding", full_dims=768, dims=128)


def upgrade() -> None:
    op.resize_mrl_prefix("mrl_pg_demo_items", PREFIX_256, PREFIX_128)


def downgrade() -> None:
    op.resize_mrl_prefix("mrl_pg_demo_items", PREFIX_128, PREFIX_256)
