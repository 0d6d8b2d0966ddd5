"""The app's table as it was before MRL: ids and full 768-dim embeddings.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "mrl_pg_demo_items",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("embedding", VECTOR(768)),
    )


def downgrade() -> None:
    op.drop_table("mrl_pg_demo_items")
