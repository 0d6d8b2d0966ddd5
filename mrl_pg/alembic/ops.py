"""Alembic operations: ``op.add_mrl_prefix``, ``op.resize_mrl_prefix``, ``op.drop_mrl_prefix``.

A stored prefix column is generated from the full vector, and PostgreSQL cannot change a
generated column's type or expression in place, so a resize drops the old index and column
and adds the new ones. An index-only prefix (``MRLPrefix(..., stored=False)``) is only an
HNSW index on the prefix expression: adding, resizing and dropping it builds and drops
indexes, and never writes a row; a resize may also switch a prefix between the two kinds.

Inside the migration's transaction (Alembic's default on PostgreSQL) a failure rolls all of it
back; the full vectors are never touched. With ``online=True``, add and resize build the new
prefix beside the old one without a table rewrite, and an index-only prefix's index with
``CREATE INDEX CONCURRENTLY`` (:mod:`mrl_pg.alembic.online`). Every operation checks its
arguments, and (outside ``--sql`` mode) the table, before any DDL, and has a ``reverse()``
for downgrades.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ClassVar

from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Column, Computed, column, text

from mrl_pg.alembic.checks import MigrationCheckError, check
from mrl_pg.alembic.citus import may_have_triggers, refuse_online_change
from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.change import DEFAULT_BATCH_SIZE, OnlineChange, locked_ddl
from mrl_pg.alembic.online.run import run_online
from mrl_pg.alembic.online.trigger import drop_trigger_sql
from mrl_pg.alembic.progress import announce_rewrite, index_build_progress
from mrl_pg.sqltext import TableRef, ident


class _PrefixOp(MigrateOperation):
    def __init__(
        self,
        table_name: str,
        *,
        schema: str | None = None,
        online: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MigrationCheckError(
                f"batch_size must be a positive integer, got {batch_size!r}"
            )
        self.table_name = table_name
        self.schema = schema
        self.online = online
        self.batch_size = batch_size

    def options(self) -> dict[str, Any]:
        """Keyword arguments that carry over to the reverse operation."""
        return {"schema": self.schema, "online": self.online, "batch_size": self.batch_size}


class _OnePrefixOp(_PrefixOp):
    """An operation on one prefix, described whole so that it can be reversed."""

    verb: ClassVar[str]

    def __init__(self, table_name: str, prefix: MRLPrefix, **options: Any) -> None:
        super().__init__(table_name, **options)
        self.prefix = prefix

    @classmethod
    def invoke_for(
        cls,
        operations: Operations,
        table_name: str,
        prefix: MRLPrefix,
        *,
        schema: str | None = None,
        online: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        operations.invoke(
            cls(table_name, prefix, schema=schema, online=online, batch_size=batch_size)
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (self.verb, self.schema, self.table_name, self.prefix)


@Operations.register_operation("add_mrl_prefix", "invoke_for")
class AddMRLPrefixOp(_OnePrefixOp):
    """Add a generated prefix column and its HNSW index; with ``online=True``, a
    trigger-maintained column built without a table rewrite (see :mod:`mrl_pg.alembic.online`).
    An index-only prefix is its index alone, built concurrently with ``online=True``."""

    verb = "add_mrl_prefix"

    def reverse(self) -> DropMRLPrefixOp:
        return DropMRLPrefixOp(self.table_name, self.prefix, **self.options())


@Operations.register_operation("drop_mrl_prefix", "invoke_for")
class DropMRLPrefixOp(_OnePrefixOp):
    """Drop a prefix column and its index (an index-only prefix: its index); ``prefix``
    describes it, for the downgrade. With ``online=True`` the drop waits for its lock in
    short, retried attempts (an index-only prefix's index is dropped concurrently), and the
    downgrade adds the prefix back online."""

    verb = "drop_mrl_prefix"

    def reverse(self) -> AddMRLPrefixOp:
        return AddMRLPrefixOp(self.table_name, self.prefix, **self.options())


@Operations.register_operation("resize_mrl_prefix")
class ResizeMRLPrefixOp(_PrefixOp):
    """Replace prefix ``old`` by ``new``: other dims, storage, distance or HNSW parameters.
    With ``online=True`` the new prefix is built beside the old one and swapped in."""

    def __init__(self, table_name: str, old: MRLPrefix, new: MRLPrefix, **options: Any) -> None:
        super().__init__(table_name, **options)
        self.old = old
        self.new = new

    @classmethod
    def resize_mrl_prefix(
        cls,
        operations: Operations,
        table_name: str,
        old: MRLPrefix,
        new: MRLPrefix,
        *,
        schema: str | None = None,
        online: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        operations.invoke(
            cls(table_name, old, new, schema=schema, online=online, batch_size=batch_size)
        )

    def reverse(self) -> ResizeMRLPrefixOp:
        return ResizeMRLPrefixOp(self.table_name, self.new, self.old, **self.options())

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("resize_mrl_prefix", self.schema, self.table_name, self.old, self.new)


@Operations.implementation_for(AddMRLPrefixOp)
def add_mrl_prefix(operations: Operations, operation: AddMRLPrefixOp) -> None:
    table = TableRef(operation.table_name, operation.schema)
    if operation.online:
        run_online(operations, OnlineChange(table, operation.prefix, None, operation.batch_size))
        return
    check(operations, table, adding=operation.prefix)
    _add(operations, table, operation.prefix)


@Operations.implementation_for(DropMRLPrefixOp)
def drop_mrl_prefix(operations: Operations, operation: DropMRLPrefixOp) -> None:
    table = TableRef(operation.table_name, operation.schema)
    check(operations, table, dropping=operation.prefix)
    if not operation.online:
        _drop(operations, table, operation.prefix)
        return
    if operation.prefix.stored:
        refuse_online_change(operations, table)
    if operation.prefix.stored or _partitioned(operations, table):
        operations.execute(locked_ddl(table, "drop", _drop_sql(table, operation.prefix)))
    else:
        with operations.get_context().autocommit_block():
            index = table.qualify(operation.prefix.index(table.name))
            operations.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")


@Operations.implementation_for(ResizeMRLPrefixOp)
def resize_mrl_prefix(operations: Operations, operation: ResizeMRLPrefixOp) -> None:
    table = TableRef(operation.table_name, operation.schema)
    if operation.online:
        change = OnlineChange(table, operation.new, operation.old, operation.batch_size)
        run_online(operations, change)
        return
    check(operations, table, adding=operation.new, dropping=operation.old)
    if operation.old.column_signature() == operation.new.column_signature():
        operations.drop_index(
            operation.old.index(table.name), table_name=table.name, schema=table.schema
        )
        _create_index(operations, table, operation.new)
        return
    _drop(operations, table, operation.old)
    _add(operations, table, operation.new)


def _add(operations: Operations, table: TableRef, prefix: MRLPrefix) -> None:
    if not prefix.stored:
        _create_index(operations, table, prefix)
        return
    spec = prefix.spec()
    generated = Computed(spec.expression(column(prefix.full_column)), persisted=True)
    live = not operations.get_context().as_sql
    if live:
        announce_rewrite(operations.get_bind(), table, prefix.column)
    operations.add_column(
        table.name, Column(prefix.column, spec.sql_type(), generated), schema=table.schema
    )
    _create_index(operations, table, prefix)


def _create_index(operations: Operations, table: TableRef, prefix: MRLPrefix) -> None:
    spec = prefix.spec()
    index = prefix.index(table.name)
    live = not operations.get_context().as_sql
    indexed = (
        prefix.column
        if prefix.stored
        else spec.expression(column(prefix.full_column)).label(prefix.column)
    )
    with index_build_progress(operations.get_bind(), index) if live else nullcontext():
        operations.create_index(
            index,
            table.name,
            [indexed],
            schema=table.schema,
            postgresql_using="hnsw",
            postgresql_with={"m": spec.m, "ef_construction": spec.ef_construction},
            postgresql_ops={prefix.column: spec.opclass},
        )


def _drop(operations: Operations, table: TableRef, prefix: MRLPrefix) -> None:
    """Drop the prefix's index, its trigger if an online change made it, and its column. A
    table Citus distributes has no such trigger (online changes refuse it), and Citus refuses
    even ``DROP TRIGGER IF EXISTS`` on it."""
    operations.drop_index(prefix.index(table.name), table_name=table.name, schema=table.schema)
    if not prefix.stored:
        return
    if may_have_triggers(operations, table):
        for statement in drop_trigger_sql(table, prefix.column):  # no construct for triggers
            operations.execute(statement)
    operations.drop_column(table.name, prefix.column, schema=table.schema)


def _drop_sql(table: TableRef, prefix: MRLPrefix) -> list[str]:
    """:func:`_drop` as statements for the ``DO`` block of an online drop."""
    index = f"DROP INDEX {table.qualify(prefix.index(table.name))}"
    if not prefix.stored:
        return [index]
    return [
        index,
        *drop_trigger_sql(table, prefix.column),
        f"ALTER TABLE {table.sql} DROP COLUMN {ident(prefix.column)}",
    ]


def _partitioned(operations: Operations, table: TableRef) -> bool:
    """Whether ``table`` is partitioned (whose indexes cannot be dropped concurrently);
    unknown, so False, in ``--sql`` mode."""
    if operations.get_context().as_sql:
        return False
    kind = operations.get_bind().execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table.sql}
    ).scalar()
    return kind == "p"
