"""How a search's pgvector settings (``hnsw.ef_search``, ``hnsw.iterative_scan``, ...) reach
the server: inside the search statement itself.

Every search statement joins a one-row subquery, ``mrl_settings``, that makes its settings
with ``set_config(..., true)`` (one call per element of bound arrays), and its first stage is
a ``LATERAL`` subquery gated on that row, so PostgreSQL makes the settings before the index
scan starts (pgvector reads them when the scan begins). Settings and search are one statement, so:

- a search costs one round trip, settings included;
- a transaction pooler (PgBouncer in ``pool_mode = transaction``) cannot send them to different
  server connections;
- on an autocommit connection the settings end with the statement, whose implicit transaction
  they are local to: nothing is ever set for the session, nothing needs putting back.

Inside a transaction, local settings would last until it ends. Before overwriting a setting,
the statement keeps its value in a placeholder setting (``mrl_pg.hnsw_ef_search`` for
``hnsw.ef_search``, also local to the transaction), once per transaction; settings the search
leaves alone are set back to that kept value, so a search never inherits an earlier one's. The
next statement on the same engine that is not a search first puts every kept value back, in a
statement of its own (:func:`restore_before_next_statement`); a search after a search needs no
such statement. Streaming searches (``stream_results``/``yield_per``) read rows after they
return, so their settings stay until the transaction ends.

PostgreSQL plans a statement with the settings in effect before it runs, and pgvector's cost
estimate reads ``hnsw.ef_search``: after a search with a large ``ef_search`` in the same
transaction, the planner may find an exact scan of a small table cheaper than its index. The
rows are then exact; on a table big enough to need the index, the index stays cheaper.

Which ``hnsw.*`` settings the server has is asked once per connection: an older pgvector
lacks some (``hnsw.iterative_scan`` came with 0.8), and PostgreSQL refuses unknown names under
its prefix once the library is loaded. A setting the server lacks is left out, with a
:class:`~mrl_pg.errors.PgvectorFeatureWarning`. The same probe checks the extension's version
against the oldest pgvector mrl_pg works with (0.7, :mod:`mrl_pg.pgvector_version`).

These two statements of mrl_pg's own (putting values back, asking for the settings) are never
prepared by psycopg, whatever the connection's ``prepare_threshold``: behind PgBouncer before
1.21 (or without ``max_prepared_statements``) a prepared statement is lost when the next
transaction runs on another server connection. tests/test_pgbouncer.py runs searches through a
real PgBouncer in transaction mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from typing import Any
from weakref import WeakSet

from sqlalchemy import (
    BindParameter,
    Boolean,
    Subquery,
    Text,
    TypeDecorator,
    bindparam,
    column,
    event,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only

from mrl_pg.errors import MissingExtensionError, PgvectorFeatureWarning
from mrl_pg.pgvector_version import require_minimum

#: ``(setting, value)`` pairs, in the order they are made.
Settings = tuple[tuple[str, str], ...]

#: The settings every search makes, in the order of the statement's slots.
MANAGED = (
    "hnsw.ef_search",
    "hnsw.iterative_scan",
    "hnsw.max_scan_tuples",
    "hnsw.scan_mem_multiplier",
)
_SETTINGS_SUBQUERY = "mrl_settings"
_APPLIED = "mrl_applied"
_NAMES = "mrl_setting_names"
_KEPT = "mrl_kept_names"
_VALUES = "mrl_setting_values"
_KNOWN_KEY = "mrl_pg_pgvector_settings"
_PENDING_KEY = "mrl_pg_restore_pending"
_PGVECTOR_PREFIX = "hnsw."


def kept_as(name: str) -> str:
    """The placeholder setting that keeps ``name``'s value from before a search."""
    return "mrl_pg." + name.replace(".", "_")


def settings_subquery(settings: Settings) -> Subquery:
    """The one-row subquery that makes ``settings`` (and puts the other managed ones back to
    their kept values) when PostgreSQL reads it. Its ``mrl_applied`` column is true; gating
    the first stage on it orders the settings before the index scan.

    The names, their placeholders and the values are three bound arrays, one element per
    managed setting (an empty value puts the kept one back), so that a connection whose
    pgvector lacks a setting binds arrays without it (:func:`parameters_for`). The subquery
    is SQL text: a few bound arrays keep the statement short to send and plan, and cheap for
    SQLAlchemy to key its compiled-statement cache on, which it does at every execution."""
    return (
        text(_SETTINGS_SQL)
        .bindparams(*_settings_arrays(MANAGED, dict(settings)))
        .columns(column(_APPLIED, Boolean))
        .subquery(_SETTINGS_SUBQUERY)
    )


# Each row keeps the setting's value in its placeholder (once per transaction), then sets it;
# concat() evaluates its arguments in order, the aggregate reads every row before the search's
# first stage (which it gates) starts.
_SETTINGS_SQL = (
    "SELECT bool_and(concat("
    "set_config(s.kept, coalesce(nullif(current_setting(s.kept, true), ''), "
    "current_setting(s.name)), true), "
    "set_config(s.name, coalesce(nullif(s.value, ''), current_setting(s.kept)), true)) "
    "IS NOT NULL) "
    f"AS {_APPLIED} "
    f"FROM unnest(:{_NAMES}, :{_KEPT}, :{_VALUES}) AS s (name, kept, value)"
)


def _settings_arrays(names: Sequence[str], wanted: Mapping[str, str]) -> list[BindParameter[Any]]:
    """The bound arrays of the settings subquery for ``names``, with ``wanted`` values."""
    arrays = {
        _NAMES: list(names),
        _KEPT: [kept_as(name) for name in names],
        _VALUES: [wanted.get(name, "") for name in names],
    }
    return [bindparam(key, value, type_=TextArray()) for key, value in arrays.items()]


class TextArray(TypeDecorator[list[str]]):
    """``TEXT[]``, bound with psycopg as one array literal (``{"a","b"}``, a string that the
    statement's ``::TEXT[]`` cast reads): psycopg adapts a list element by element, looking
    up each element's dumper, which for the three arrays of a search took ~25 µs of Python
    at every execution, more than everything else it sends. Other drivers get the list."""

    impl = ARRAY(Text)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.driver != "psycopg":
            return self.impl_instance.bind_processor(dialect)
        return _array_literal


def _array_literal(values: Sequence[str] | None) -> str | None:
    """PostgreSQL's text form of a one-dimensional array of strings, every element quoted."""
    return None if values is None else _literal_of(tuple(values))


@lru_cache(maxsize=256)  # a search binds the same few arrays again and again
def _literal_of(values: tuple[str, ...]) -> str:
    quoted = (value.replace("\\", "\\\\").replace('"', '\\"') for value in values)
    return "{" + ",".join(f'"{value}"' for value in quoted) + "}"


def parameters_for(conn: Connection, settings: Settings) -> dict[str, Any]:
    """Bound values that replace the statement's own for ``conn``: none when the server has
    every managed setting; otherwise arrays without the missing ones, with a warning if the
    search asked for one of them."""
    if pgvector_settings(conn).issuperset(MANAGED):
        return {}
    present = present_settings(conn, settings)
    return {
        array.key: array.value for array in _settings_arrays(present, dict(settings))
    }


def present_settings(conn: Connection, settings: Settings) -> list[str]:
    """The managed settings the server's pgvector has, with a warning if ``settings`` asks
    for one it lacks."""
    known = pgvector_settings(conn)
    missing = [name for name in MANAGED if name not in known]
    asked = [name for name, _ in settings if name in missing]
    if asked:
        warnings.warn(
            f"the database's pgvector has no {', '.join(asked)} (pgvector 0.8 added iterative"
            " index scans): the search runs without, and a filtered one may return fewer than"
            " k rows; ALTER EXTENSION vector UPDATE after upgrading pgvector",
            PgvectorFeatureWarning,
            stacklevel=4,
        )
    return [name for name in MANAGED if name in known]


def with_parameters(
    distilled_params: list[Mapping[str, Any]], extra: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """The statement's parameter sets with ``extra`` added to each."""
    if not extra:
        return distilled_params
    return [{**params, **extra} for params in distilled_params] or [dict(extra)]


def in_transaction_block(conn: Connection) -> bool:
    """Whether statements on ``conn`` run inside a transaction block (not autocommit)."""
    return not getattr(conn.connection.dbapi_connection, "autocommit", False)


def restore_before_next_statement(
    conn: Connection, restore: Callable[[Connection], None] | None = None
) -> None:
    """Have the next statement on ``conn``'s DBAPI connection that is not a search put the
    kept settings back first, unless the transaction ends before (a commit, a rollback, or
    the pool's reset of a connection given back). The listeners that do it are registered
    once per engine, the first time a search there needs them. ``restore`` puts them back
    (by default with ``set_config``); a restore asked for by an earlier search of the
    transaction that is not the default one stays (the distributed form's also restores the
    coordinator)."""
    engine = conn.engine
    if engine not in _RESTORING_ENGINES:
        event.listen(engine, "before_cursor_execute", _restore_if_pending)
        event.listen(engine, "commit", _forget_pending)
        event.listen(engine, "rollback", _forget_pending)
        event.listen(engine.pool, "reset", _forget_pending_on_reset)
        _RESTORING_ENGINES.add(engine)
    if restore is not None or _PENDING_KEY not in conn.info:
        conn.info[_PENDING_KEY] = restore or _restore_kept


_RESTORING_ENGINES: WeakSet[Engine] = WeakSet()
def own_statement_listeners(engine: Engine) -> int:
    """How many listeners to statement events mrl_pg has added to ``engine`` (one, to
    ``before_cursor_execute``, once a search there needed its settings put back)."""
    return 1 if engine in _RESTORING_ENGINES else 0


def is_search(context: ExecutionContext | None) -> bool:
    """Whether the statement of ``context`` is a search, which makes its own settings."""
    statement = getattr(context, "invoked_statement", None)
    return getattr(statement, "makes_own_settings", False) is True


def _restore_if_pending(
    conn: Connection,
    cursor: DBAPICursor,
    statement: str,
    parameters: Any,
    context: ExecutionContext | None,
    executemany: bool,
) -> None:
    restore = conn.info.get(_PENDING_KEY)
    if restore is None or is_search(context):
        return
    del conn.info[_PENDING_KEY]
    restore(conn)


def _restore_kept(conn: Connection) -> None:
    """Put the kept settings back with ``set_config``, on this server."""
    known = [name for name in MANAGED if name in pgvector_settings(conn)]
    markers = _placeholders(conn, 4 * len(known))
    parts = [
        f"set_config({name}, coalesce(nullif(current_setting({kept}, true), ''), "
        f"current_setting({same})), true), set_config({kept_again}, '', true)"
        for name, kept, same, kept_again in zip(*[iter(markers)] * 4, strict=True)
    ]
    values: list[str] = []
    for name in known:
        values += [name, kept_as(name), name, kept_as(name)]
    _run(conn, "SELECT " + ", ".join(parts), values)


def _forget_pending(conn: Connection) -> None:
    conn.info.pop(_PENDING_KEY, None)


def _forget_pending_on_reset(
    dbapi_connection: Any, connection_record: ConnectionPoolEntry, reset_state: Any
) -> None:
    """The pool ended the transaction of a connection given back to it."""
    connection_record.info.pop(_PENDING_KEY, None)


def pgvector_settings(conn: Connection) -> frozenset[str]:
    """The ``hnsw.*`` settings of the server's pgvector, asked once per DBAPI connection. A
    ``vector`` literal loads the library, which defines them, before ``pg_settings`` is read.
    The same first query reads the extension's version, checked against mrl_pg's minimum
    (:func:`~mrl_pg.pgvector_version.require_minimum`): an older pgvector raises
    :class:`~mrl_pg.errors.PgvectorVersionError` at the connection's first search, and at
    each later one, since nothing is cached for it."""
    known: frozenset[str] | None = conn.info.get(_KNOWN_KEY)
    if known is not None:
        return known
    rows = _run(
        conn,
        "SELECT quote_ident(n.nspname), e.extversion FROM pg_extension e "
        "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'",
    )
    if not rows:
        raise MissingExtensionError(
            "the database has no vector extension (pgvector): CREATE EXTENSION vector"
        )
    require_minimum(rows[0][1])
    rows = _run(
        conn,
        f"SELECT name FROM pg_settings WHERE '[0]'::{rows[0][0]}.vector IS NOT NULL "
        f"AND name LIKE '{_PGVECTOR_PREFIX}%'",
    )
    known = frozenset(name for (name,) in rows)
    conn.info[_KNOWN_KEY] = known
    return known


def _run(conn: Connection, sql: str, values: Sequence[str] = ()) -> list[Any]:
    """One statement of mrl_pg's own on the DBAPI connection, and its rows (without
    ``values``, the SQL is sent as it is: ``%`` needs no doubling). psycopg (sync
    or async) is told never to prepare it, whatever the connection's ``prepare_threshold``:
    a pooler in transaction mode (PgBouncer before 1.21, or without
    ``max_prepared_statements``) cannot follow a prepared statement from one server
    connection to the next."""
    if conn.dialect.driver == "psycopg":
        driver = conn.connection.driver_connection
        if conn.dialect.is_async:
            return await_only(_run_psycopg_async(driver, sql, values))
        with driver.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(sql, values or None, prepare=False)
            return cursor.fetchall() if cursor.description else []
    helper = _dbapi_connection(conn).cursor()
    try:
        helper.execute(sql, values or None)
        return list(helper.fetchall()) if helper.description else []
    finally:
        helper.close()


async def _run_psycopg_async(driver: Any, sql: str, values: Sequence[str]) -> list[Any]:
    async with driver.cursor() as cursor:
        await cursor.execute(sql, values or None, prepare=False)
        return await cursor.fetchall() if cursor.description else []


def _placeholders(conn: Connection, count: int) -> list[str]:
    """``count`` positional parameter markers in the driver's style: ``$1, $2, ...`` for
    asyncpg, ``%s`` for psycopg and the other format-style drivers."""
    if conn.dialect.paramstyle == "numeric_dollar":
        return [f"${i}" for i in range(1, count + 1)]
    return ["%s"] * count


def _dbapi_connection(conn: Connection) -> Any:
    """The pool's DBAPI connection, not ``cursor.connection``: asyncio drivers' adapted
    cursors have no ``connection`` attribute."""
    return conn.connection.dbapi_connection
