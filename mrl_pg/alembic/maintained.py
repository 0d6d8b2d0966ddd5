"""Prefix columns kept current by a trigger instead of a generation expression.

A STORED generated column can only be added by rewriting the table, so the online path
(:mod:`mrl_pg.alembic.online`) builds a plain column that a ``BEFORE INSERT OR UPDATE``
trigger fills. Trigger and function follow one pattern so that reflection and the
plain-SQL ``mrl_search`` function recognise such a column as a prefix:

- trigger ``mrl_pg_<column>`` on the table, ``BEFORE INSERT OR UPDATE OF <full>, <column>``;
- function ``mrl_pg_<table>_<column>()`` in the table's schema, whose body is
  ``NEW."<column>" := <the prefix expression of NEW."<full>">; RETURN NEW;``.

All SQL here quotes every identifier, so that the body reads the same to every reader.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import literal_column
from sqlalchemy.dialects.postgresql.base import PGDialect

from mrl_pg.alembic.prefix_args import MRLPrefix
from mrl_pg.declare import fit_identifier

TRIGGER_PREFIX = "mrl_pg_"
#: Renders SQL text for scripts that run with or without a database at hand.
DIALECT = PGDialect()  # type: ignore[no-untyped-call]


def ident(name: str) -> str:
    """``name`` as an always-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    """``value`` as an SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


@dataclass(frozen=True)
class TableRef:
    """A table and the SQL names of the things mrl_pg keeps on it."""

    name: str
    schema: str | None = None

    @property
    def sql(self) -> str:
        """The quoted, schema-qualified table name."""
        return f"{ident(self.schema)}.{ident(self.name)}" if self.schema else ident(self.name)

    @property
    def regclass(self) -> str:
        return f"{literal(self.sql)}::regclass"

    def qualify(self, name: str) -> str:
        """A quoted name in the table's schema (indexes, functions)."""
        return f"{ident(self.schema)}.{ident(name)}" if self.schema else ident(name)

    def trigger_name(self, column: str) -> str:
        return fit_identifier(f"{TRIGGER_PREFIX}{column}")

    def function_sql(self, column: str) -> str:
        return self.qualify(fit_identifier(f"{TRIGGER_PREFIX}{self.name}_{column}"))


def expression_sql(prefix: MRLPrefix, full_vector: str) -> str:
    """The prefix of the SQL expression ``full_vector``, as SQL text."""
    compiled = prefix.spec().expression(literal_column(full_vector)).compile(
        dialect=DIALECT, compile_kwargs={"literal_binds": True}
    )
    return str(compiled)


def trigger_body(prefix: MRLPrefix, column: str) -> str:
    """The body of the function that sets ``column`` to ``prefix`` of the new row."""
    expression = expression_sql(prefix, f"NEW.{ident(prefix.full_column)}")
    return f"\nBEGIN\n    NEW.{ident(column)} := {expression};\n    RETURN NEW;\nEND\n"


def create_trigger_sql(table: TableRef, prefix: MRLPrefix, column: str) -> list[str]:
    """Function and trigger that keep ``column`` equal to ``prefix`` of the full vector."""
    function = table.function_sql(column)
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
        f"AS $mrl_fn${trigger_body(prefix, column)}$mrl_fn$",
        f"CREATE OR REPLACE TRIGGER {ident(table.trigger_name(column))} "
        f"BEFORE INSERT OR UPDATE OF {ident(prefix.full_column)}, {ident(column)} "
        f"ON {table.sql} FOR EACH ROW EXECUTE FUNCTION {function}()",
    ]


def drop_trigger_sql(table: TableRef, column: str) -> list[str]:
    """Drop the trigger and function of ``column``, if it has them."""
    return [
        f"DROP TRIGGER IF EXISTS {ident(table.trigger_name(column))} ON {table.sql}",
        f"DROP FUNCTION IF EXISTS {table.function_sql(column)}()",
    ]
