"""Sharding a table with Citus, the distributed PostgreSQL that runs pgvector.

A model with prefixes is created as on one node (``metadata.create_all``, or the Alembic
migration that adds it), then handed to Citus once, in the same migration or right after::

    from mrl_pg.citus import distribute_table

    def upgrade() -> None:
        op.create_table("items", ...)          # or add_mrl_prefix on an existing table
        distribute_table(op.get_bind(), "items", "tenant_id")

Citus hashes the distribution column's value to pick a shard (32 by default,
``citus.shard_count``); every shard is a table of its own on a worker, with the prefix columns
and their HNSW indexes of the coordinator's table. The primary key and unique constraints must
include the distribution column. Choose the column the searches filter on (the tenant of a
multi-tenant app): a search filtered on it runs on one shard; one that is not runs on every
shard (see docs/citus.md). A small table that every shard joins, say of categories, is better
a reference table, copied whole to every node (:func:`make_reference_table`).

Searches (``mrl_search``) recognise a database with the ``citus`` extension by themselves, and
the Alembic operations work on a distributed table in their plain (not online) mode.
"""

from __future__ import annotations

from sqlalchemy import Connection, Table, text

from mrl_pg.errors import DistributionError
from mrl_pg.search.citus import runs_on_citus
from mrl_pg.sqltext import TableRef


def distribute_table(
    connection: Connection,
    table: Table | str,
    column: str,
    *,
    schema: str | None = None,
    shard_count: int | None = None,
    colocate_with: str = "default",
) -> None:
    """Shard ``table`` by the hash of ``column`` with Citus' ``create_distributed_table``, in
    the connection's transaction. Rows already in the table are copied to the shards.

    ``shard_count`` defaults to the server's ``citus.shard_count`` (32 unless changed): a few
    times the number of worker cores, so that a search across all shards keeps every core
    busy. ``colocate_with`` names a distributed table whose shards this one shares (tables
    joined on the distribution column should), ``"none"`` for none of them."""
    if shard_count is not None and (
        isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1
    ):
        raise DistributionError(f"shard_count must be a positive integer, got {shard_count!r}")
    ref = _require_citus(connection, table, schema)
    count = "" if shard_count is None else ", shard_count => :shard_count"
    connection.execute(
        text(
            "SELECT create_distributed_table(CAST(:table AS regclass), :column, "
            f"colocate_with => :colocate_with{count})"
        ),
        {
            "table": ref.sql,
            "column": column,
            "colocate_with": colocate_with,
            **({} if shard_count is None else {"shard_count": shard_count}),
        },
    )


def make_reference_table(
    connection: Connection, table: Table | str, *, schema: str | None = None
) -> None:
    """Copy ``table`` whole to every node with Citus' ``create_reference_table``, in the
    connection's transaction: for small tables that searches of distributed tables join."""
    ref = _require_citus(connection, table, schema)
    connection.execute(
        text("SELECT create_reference_table(CAST(:table AS regclass))"), {"table": ref.sql}
    )


def is_distributed(
    connection: Connection, table: Table | str, *, schema: str | None = None
) -> bool:
    """Whether Citus manages ``table`` (distributed or reference); False without Citus."""
    if not runs_on_citus(connection):
        return False
    return bool(
        connection.execute(
            text(
                "SELECT EXISTS (SELECT FROM pg_dist_partition "
                "WHERE logicalrelid = to_regclass(:table))"
            ),
            {"table": _table_ref(table, schema).sql},
        ).scalar_one()
    )


def _require_citus(connection: Connection, table: Table | str, schema: str | None) -> TableRef:
    if not runs_on_citus(connection):
        raise DistributionError(
            "the database has no citus extension: CREATE EXTENSION citus (with citus in "
            "shared_preload_libraries), or connect to the Citus coordinator"
        )
    return _table_ref(table, schema)


def _table_ref(table: Table | str, schema: str | None) -> TableRef:
    if isinstance(table, Table):
        return TableRef(table.name, table.schema if schema is None else schema)
    return TableRef(table, schema)


__all__ = ["distribute_table", "is_distributed", "make_reference_table"]
