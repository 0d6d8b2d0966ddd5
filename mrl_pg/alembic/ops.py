"""Alembic operations: ``op.add_mrl_prefix``, ``op.resize_mrl_prefix``, ``op.drop_mrl_prefix``.

A prefix column is generated from the full vector, and PostgreSQL cannot change a generated
column's type or expression in place, so a resize drops the old index and column and adds the
new ones. Inside the migration's transaction (Alembic's default on PostgreSQL) a failure rolls
all of it back; the full vectors are never touched. Every operation checks its arguments, and
(outside ``--sql`` mode) the table, before any DDL, and has a ``reverse()`` for downgrades.
"""

from __future__ import annotations

from typing import Any, ClassVar

from alembic.operations import MigrateOperation, Operations
from sqlalchemy import Column, Computed, column, text

from mrl_pg.alembic.prefix_args import MRLPrefix
from mrl_pg.errors import MRLError, NotAVectorColumnError, PrefixConfigError


class MigrationCheckError(MRLError, ValueError):
    """The database does not allow the migration: unknown table or column, a name in use."""


class _PrefixOp(MigrateOperation):
    def __init__(self, table_name: str, schema: str | None = None) -> None:
        self.table_name = table_name
        self.schema = schema


class _OnePrefixOp(_PrefixOp):
    """An operation on one prefix, described whole so that it can be reversed."""

    verb: ClassVar[str]

    def __init__(self, table_name: str, prefix: MRLPrefix, *, schema: str | None = None) -> None:
        super().__init__(table_name, schema)
        self.prefix = prefix

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return (self.verb, self.schema, self.table_name, self.prefix)


@Operations.register_operation("add_mrl_prefix")
class AddMRLPrefixOp(_OnePrefixOp):
    """Add a generated prefix column and its HNSW index."""

    verb = "add_mrl_prefix"

    @classmethod
    def add_mrl_prefix(
        cls,
        operations: Operations,
        table_name: str,
        prefix: MRLPrefix,
        *,
        schema: str | None = None,
    ) -> None:
        operations.invoke(cls(table_name, prefix, schema=schema))

    def reverse(self) -> DropMRLPrefixOp:
        return DropMRLPrefixOp(self.table_name, self.prefix, schema=self.schema)


@Operations.register_operation("drop_mrl_prefix")
class DropMRLPrefixOp(_OnePrefixOp):
    """Drop a prefix column and its index; ``prefix`` describes it, for the downgrade."""

    verb = "drop_mrl_prefix"

    @classmethod
    def drop_mrl_prefix(
        cls,
        operations: Operations,
        table_name: str,
        prefix: MRLPrefix,
        *,
        schema: str | None = None,
    ) -> None:
        operations.invoke(cls(table_name, prefix, schema=schema))

    def reverse(self) -> AddMRLPrefixOp:
        return AddMRLPrefixOp(self.table_name, self.prefix, schema=self.schema)


@Operations.register_operation("resize_mrl_prefix")
class ResizeMRLPrefixOp(_PrefixOp):
    """Replace prefix ``old`` by ``new``: other dims, storage, distance or HNSW parameters."""

    def __init__(
        self, table_name: str, old: MRLPrefix, new: MRLPrefix, *, schema: str | None = None
    ) -> None:
        super().__init__(table_name, schema)
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
    ) -> None:
        operations.invoke(cls(table_name, old, new, schema=schema))

    def reverse(self) -> ResizeMRLPrefixOp:
        return ResizeMRLPrefixOp(self.table_name, self.new, self.old, schema=self.schema)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("resize_mrl_prefix", self.schema, self.table_name, self.old, self.new)


@Operations.implementation_for(AddMRLPrefixOp)
def add_mrl_prefix(operations: Operations, operation: AddMRLPrefixOp) -> None:
    _check(operations, operation.table_name, operation.schema, adding=operation.prefix)
    _add(operations, operation.table_name, operation.prefix, operation.schema)


@Operations.implementation_for(DropMRLPrefixOp)
def drop_mrl_prefix(operations: Operations, operation: DropMRLPrefixOp) -> None:
    _check(operations, operation.table_name, operation.schema, dropping=operation.prefix)
    _drop(operations, operation.table_name, operation.prefix, operation.schema)


@Operations.implementation_for(ResizeMRLPrefixOp)
def resize_mrl_prefix(operations: Operations, operation: ResizeMRLPrefixOp) -> None:
    table, schema = operation.table_name, operation.schema
    _check(operations, table, schema, adding=operation.new, dropping=operation.old)
    _drop(operations, table, operation.old, schema)
    _add(operations, table, operation.new, schema)


def _add(operations: Operations, table: str, prefix: MRLPrefix, schema: str | None) -> None:
    spec = prefix.spec()
    generated = Computed(spec.expression(column(prefix.full_column)), persisted=True)
    operations.add_column(table, Column(prefix.column, spec.sql_type(), generated), schema=schema)
    operations.create_index(
        prefix.index(table),
        table,
        [prefix.column],
        schema=schema,
        postgresql_using="hnsw",
        postgresql_with={"m": spec.m, "ef_construction": spec.ef_construction},
        postgresql_ops={prefix.column: spec.opclass},
    )


def _drop(operations: Operations, table: str, prefix: MRLPrefix, schema: str | None) -> None:
    operations.drop_index(prefix.index(table), table_name=table, schema=schema)
    operations.drop_column(table, prefix.column, schema=schema)


def _check(
    operations: Operations,
    table: str,
    schema: str | None,
    *,
    adding: MRLPrefix | None = None,
    dropping: MRLPrefix | None = None,
) -> None:
    """Validate the prefixes, then, with a database at hand, the table they apply to."""
    for prefix in (adding, dropping):
        if prefix is not None:
            prefix.spec()
    if operations.get_context().as_sql:
        return
    conn = operations.get_bind()
    qualified = f'"{schema}"."{table}"' if schema else f'"{table}"'
    columns: dict[str, str] = dict(
        conn.execute(
            text(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped"
            ),
            {"t": qualified},
        ).all()
    )
    if not columns:
        raise MigrationCheckError(f"table {qualified} does not exist")
    for prefix in (adding, dropping):
        if prefix is None:
            continue
        full_type = columns.get(prefix.full_column)
        if full_type is None:
            raise MigrationCheckError(f"table {qualified} has no column {prefix.full_column!r}")
        expected = f"{prefix.full_type}({prefix.full_dims})"
        if full_type != expected:
            raise NotAVectorColumnError(
                f"column {prefix.full_column!r} of {qualified} is {full_type}, not {expected}"
            )
    if dropping is not None and dropping.column not in columns:
        raise MigrationCheckError(f"table {qualified} has no prefix column {dropping.column!r}")
    if adding is None:
        return
    replaced = dropping.column if dropping is not None else None
    if adding.column in columns and adding.column != replaced:
        raise PrefixConfigError(f"table {qualified} already has a column {adding.column!r}")
    index = adding.index(table)
    replaced_index = dropping.index(table) if dropping is not None else None
    index_taken = conn.execute(
        text("SELECT to_regclass(:i) IS NOT NULL"),
        {"i": f'"{schema}"."{index}"' if schema else f'"{index}"'},
    ).scalar_one()
    if index_taken and index != replaced_index:
        raise MigrationCheckError(f"an index or table named {index!r} already exists")
