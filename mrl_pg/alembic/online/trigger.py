"""Prefix columns kept current by a trigger instead of a generation expression.

A STORED generated column can only be added by rewriting the table, so the online path
(:mod:`mrl_pg.alembic.online`) builds a plain column that a ``BEFORE INSERT OR UPDATE``
trigger fills. Trigger and function follow one pattern so that reflection and the
plain-SQL ``mrl_search`` function recognise such a column as a prefix:

- trigger ``mrl_pg_<column>`` on the table, ``BEFORE INSERT OR UPDATE OF <full>, <column>``;
- function ``mrl_pg_<table>_<column>()`` in the table's schema, whose body is
  ``NEW."<column>" := <the prefix expression of NEW."<full>">; RETURN NEW;``.

"""

from __future__ import annotations

from sqlalchemy import literal_column

from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.prefix.names import fit_identifier
from mrl_pg.sqltext import DIALECT, TableRef, ident

TRIGGER_PREFIX = "mrl_pg_"


def trigger_name(column: str) -> str:
    """The trigger that keeps ``column`` current."""
    return fit_identifier(f"{TRIGGER_PREFIX}{column}")


def function_sql(table: TableRef, column: str) -> str:
    """The quoted, qualified name of the trigger function that keeps ``column`` current."""
    return table.qualify(fit_identifier(f"{TRIGGER_PREFIX}{table.name}_{column}"))


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
    function = function_sql(table, column)
    return [
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
        f"AS $mrl_fn${trigger_body(prefix, column)}$mrl_fn$",
        f"CREATE OR REPLACE TRIGGER {ident(trigger_name(column))} "
        f"BEFORE INSERT OR UPDATE OF {ident(prefix.full_column)}, {ident(column)} "
        f"ON {table.sql} FOR EACH ROW EXECUTE FUNCTION {function}()",
    ]


def drop_trigger_sql(table: TableRef, column: str) -> list[str]:
    """Drop the trigger and function of ``column``, if it has them."""
    return [
        f"DROP TRIGGER IF EXISTS {ident(trigger_name(column))} ON {table.sql}",
        f"DROP FUNCTION IF EXISTS {function_sql(table, column)}()",
    ]
