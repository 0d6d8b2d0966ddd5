"""The demo app's schema as it stands after the last migration."""

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Integer, MetaData, Table

from mrl_pg import add_prefix_column

DIMS = 768
PREFIX_DIMS = 128

metadata = MetaData()
items = Table(
    "mrl_pg_demo_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("embedding", VECTOR(DIMS)),
)
add_prefix_column(items, "embedding", PREFIX_DIMS, name="embedding_mrl")
