"""SQL text for what SQLAlchemy and Alembic have no construct for (PL/pgSQL bodies, ``DO``
blocks, catalog lookups by name): identifiers quoted by the PostgreSQL dialect, values as
literals only where PL/pgSQL needs them inline.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.dialects.postgresql.base import PGDialect

#: Renders SQL text for scripts that run with or without a database at hand.
DIALECT = PGDialect()  # type: ignore[no-untyped-call]
_PREPARER = DIALECT.identifier_preparer


def ident(name: str) -> str:
    """``name`` as an SQL identifier, quoted where PostgreSQL needs it (upper case, reserved
    words, other characters), the way SQLAlchemy and Alembic quote the DDL they write."""
    return _PREPARER.quote(name)


def literal(value: str) -> str:
    """``value`` as an SQL string literal (``standard_conforming_strings``, on since
    PostgreSQL 9.1)."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableRef:
    """A table by name and schema, and the quoted SQL names of things in its schema."""

    name: str
    schema: str | None = None

    @property
    def sql(self) -> str:
        """The quoted, schema-qualified table name."""
        return self.qualify(self.name)

    @property
    def regclass(self) -> str:
        return f"{literal(self.sql)}::regclass"

    def qualify(self, name: str) -> str:
        """A quoted name in the table's schema (indexes, functions)."""
        return f"{ident(self.schema)}.{ident(name)}" if self.schema else ident(name)
