"""Checks an operation makes before any DDL: its prefixes, the database's pgvector (for a
prefix it adds), then the table they apply to."""

from __future__ import annotations

from alembic.operations import Operations
from sqlalchemy import Connection, text

from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.errors import (
    MissingExtensionError,
    MRLError,
    NotAVectorColumnError,
    PrefixConfigError,
)
from mrl_pg.pgvector_version import require_minimum
from mrl_pg.sqltext import TableRef


class MigrationCheckError(MRLError, ValueError):
    """The migration cannot run as asked: unknown table or column, a name in use, a batch
    size that is not a positive integer."""


def check(
    operations: Operations,
    table_ref: TableRef,
    *,
    adding: MRLPrefix | None = None,
    dropping: MRLPrefix | None = None,
    resuming: bool = False,
) -> None:
    """Validate the prefixes, then, with a database at hand, the table they apply to.
    ``resuming``: an online change, which an interrupted earlier run may have taken past the
    drop of an index-only ``dropping``'s index."""
    for prefix in (adding, dropping):
        if prefix is not None:
            prefix.spec()
    if operations.get_context().as_sql:
        return
    conn = operations.get_bind()
    if adding is not None:
        check_pgvector(conn)
    table, qualified = table_ref.name, table_ref.sql
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

    def index_exists(name: str) -> bool:
        found = conn.execute(
            text("SELECT to_regclass(:i) IS NOT NULL"), {"i": table_ref.qualify(name)}
        ).scalar_one()
        return bool(found)

    if dropping is not None and dropping.stored and dropping.column not in columns:
        raise MigrationCheckError(f"table {qualified} has no prefix column {dropping.column!r}")
    if (
        dropping is not None
        and not dropping.stored
        and not resuming
        and not index_exists(dropping.index(table))
    ):
        raise MigrationCheckError(
            f"table {qualified} has no index {dropping.index(table)!r} of index-only prefix "
            f"{dropping.column!r}"
        )
    if adding is None:
        return
    replaced = dropping.column if dropping is not None and dropping.stored else None
    if adding.stored and adding.column in columns and adding.column != replaced:
        raise PrefixConfigError(f"table {qualified} already has a column {adding.column!r}")
    index = adding.index(table)
    replaced_index = dropping.index(table) if dropping is not None else None
    if index != replaced_index and index_exists(index):
        raise MigrationCheckError(f"an index or table named {index!r} already exists")


def check_pgvector(conn: Connection) -> None:
    """The ``vector`` extension is installed, at a version whose functions a prefix
    expression can use (:data:`mrl_pg.pgvector_version.MINIMUM`)."""
    version = conn.execute(
        text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    ).scalar_one_or_none()
    if version is None:
        raise MissingExtensionError(
            "the database has no vector extension (pgvector): CREATE EXTENSION vector"
        )
    require_minimum(version)
