"""Autogenerate in the test's own schema only, whatever else the database holds."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, inspect


def own_tables_only(connection: Connection) -> Callable[[str | None, str, dict[str, str | None]], bool]:
    """An ``include_name`` for autogenerate that keeps to the tables of the connection's own
    schema. Alembic reflects every table on the ``search_path`` as one of the default schema,
    and the tests' ``search_path`` goes on to ``public``, where other tables may live.

    The tables are listed at the first call, inside autogenerate's transaction: a query
    before ``context.configure()`` would leave one open, and Alembic would then leave it to
    ``env.py`` to commit."""
    own: set[str] | None = None

    def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
        nonlocal own
        if type_ != "table":
            return True
        if own is None:
            schema = connection.dialect.default_schema_name
            own = set(inspect(connection).get_table_names(schema=schema))
        return name in own

    return include_name
