"""Refusing online prefix changes on tables that Citus manages.

An online change of a stored prefix pages through the table by ``ctid`` on the connection's
server and keeps the new column current with a trigger. On Citus the coordinator's table holds
no rows (the shards on the workers do), and triggers on distributed tables are off unless
``citus.enable_unsafe_triggers`` is set: the change would swap in an empty prefix. So it stops
before any DDL with :class:`DistributedTableError`. The plain operations (``online=False``)
work: Citus runs ``ADD COLUMN ... GENERATED ALWAYS AS ... STORED``, ``DROP COLUMN`` and
``CREATE INDEX`` on every shard. So do the online changes of index-only prefixes, which only
run ``CREATE INDEX CONCURRENTLY``, ``DROP INDEX CONCURRENTLY`` and ``ALTER INDEX ... RENAME``,
statements Citus applies to every shard.
"""

from __future__ import annotations

from alembic.operations import Operations

from mrl_pg.alembic.checks import MigrationCheckError
from mrl_pg.citus import is_distributed
from mrl_pg.sqltext import TableRef


class DistributedTableError(MigrationCheckError):
    """An online change of a stored prefix was asked for a table that Citus distributes; run
    it with ``online=False``, or make the prefix index-only."""


def refuse_online_change(operations: Operations, table: TableRef) -> None:
    """Raise :class:`DistributedTableError` if Citus manages ``table``; nothing to check in
    ``--sql`` mode."""
    if operations.get_context().as_sql:
        return
    if is_distributed(operations.get_bind(), table.name, schema=table.schema):
        raise DistributedTableError(
            f"{table.sql} is distributed by Citus, where an online prefix change cannot run:"
            " its backfill reads the coordinator's table, which holds no rows, and its trigger"
            " would not run on the shards. Use online=False: Citus adds the generated column"
            " and builds its HNSW index on every shard, each shard rewritten under its lock;"
            " or an index-only prefix (stored=False), whose online changes only build and drop"
            " indexes, which Citus does on every shard"
        )


def may_have_triggers(operations: Operations, table: TableRef) -> bool:
    """Whether ``table`` may carry a trigger of an online change: not when Citus distributes
    it; in ``--sql`` mode, which cannot tell, it may."""
    if operations.get_context().as_sql:
        return True
    return not is_distributed(operations.get_bind(), table.name, schema=table.schema)
