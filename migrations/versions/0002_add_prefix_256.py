"""Add a 256-dim halfvec prefix of the embeddings, with its HNSW index.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from mrl_pg.alembic import MRLPrefix

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PREFIX_256 = MRLPrefix(column="embedding_mrl", full_column="embedding", full_dims=768, dims=256)


def upgrade() -> None:
    op.add_mrl_prefix("mrl_pg_demo_items", PREFIX_256)


def downgrade() -> None:
    op.drop_mrl_prefix("mrl_pg_demo_items", PREFIX_256)
