"""Per-statement pgvector settings (``hnsw.ef_search``, ``hnsw.iterative_scan``, ...).

A search statement (:class:`~mrl_pg.search.search_select.SearchSelect`) carries the settings
it needs and runs itself through :func:`run_with_settings`: right before the statement they are
set with ``set_config``, local to the transaction, and right after it the ones that changed are
put back, so the next statement on the connection (pooled or not, in the same transaction or
not) sees the values it saw before. On a connection in autocommit mode the settings are made at
session level and put back after the statement, or after its error. Statements that are not
searches never reach this module: no event listener is registered anywhere.

Streaming results (``stream_results``/``yield_per``) fetch rows after the statement has
"executed", so their settings are left in place until the end of the transaction instead.

Which ``hnsw.*`` settings the server has is asked once per connection: an older pgvector
lacks some (``hnsw.iterative_scan`` came with 0.8), and PostgreSQL refuses unknown names
under its prefix once the library is loaded, but silently drops them before. Settings the
server lacks are left out, with a :class:`~mrl_pg.errors.PgvectorFeatureWarning`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy.engine import Connection

from mrl_pg.errors import MissingExtensionError, PgvectorFeatureWarning

_KNOWN_KEY = "mrl_pg_pgvector_settings"
_PGVECTOR_PREFIX = "hnsw."

#: ``(setting, value)`` pairs, in the order they are made.
Settings = tuple[tuple[str, str], ...]

_Result = TypeVar("_Result")


def run_with_settings(
    conn: Connection, settings: Settings, streaming: bool, execute: Callable[[], _Result]
) -> _Result:
    """``execute()`` (one statement on ``conn``) with ``settings`` in effect; see the module
    docstring for how long they last. The transaction SQLAlchemy would begin for the statement
    is begun first, so that the settings live in the same one."""
    if not settings:
        return execute()
    if not conn.in_transaction():
        conn.begin()
    local = not getattr(_dbapi_connection(conn), "autocommit", False)
    previous = _apply(conn, settings, local)
    try:
        result = execute()
    except BaseException:
        # A transaction's rollback undoes local settings; session-level ones are ours to undo.
        if previous and not local and not conn.invalidated:
            _restore(conn, previous, local)
        raise
    if previous and not streaming:
        _restore(conn, previous, local)
    return result


def streams_results(*option_sets: Mapping[str, Any]) -> bool:
    """Whether execution options, merged in the order given (later ones win), fetch rows
    after the statement returns (``stream_results``, or ``yield_per`` which implies it)."""
    merged: dict[str, Any] = {}
    for options in option_sets:
        merged.update(options)
    return bool(merged.get("stream_results") or merged.get("yield_per"))



def _placeholders(conn: Connection, count: int) -> list[str]:
    """``count`` positional parameter markers in the driver's style: ``$1, $2, ...`` for
    asyncpg, ``%s`` for psycopg and the other format-style drivers."""
    if conn.dialect.paramstyle == "numeric_dollar":
        return [f"${i}" for i in range(1, count + 1)]
    return ["%s"] * count


def _set_sql(markers: list[str]) -> str:
    """Read each setting's current value, then set it; one round trip for all of them."""
    parts = [
        f"current_setting({name}, true), set_config({same}, {value}, {local})"
        for name, same, value, local in zip(*[iter(markers)] * 4, strict=True)
    ]
    return "SELECT " + ", ".join(parts)


def _restore_sql(markers: list[str]) -> str:
    """Put settings back; a NULL value (the setting did not exist yet) resets it."""
    parts = [
        f"set_config({name}, {value}, {local})"
        for name, value, local in zip(*[iter(markers)] * 3, strict=True)
    ]
    return "SELECT " + ", ".join(parts)


def pgvector_settings(conn: Connection) -> frozenset[str]:
    """The ``hnsw.*`` settings of the server's pgvector, asked once per DBAPI connection. A
    ``vector`` literal loads the library, which defines them, before ``pg_settings`` is read."""
    known: frozenset[str] | None = conn.info.get(_KNOWN_KEY)
    if known is not None:
        return known
    helper = _dbapi_connection(conn).cursor()
    try:
        helper.execute(
            "SELECT quote_ident(n.nspname) FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'"
        )
        row = helper.fetchone()
        if row is None:
            raise MissingExtensionError(
                "the database has no vector extension (pgvector): CREATE EXTENSION vector"
            )
        helper.execute(
            f"SELECT name FROM pg_settings WHERE '[0]'::{row[0]}.vector IS NOT NULL "
            f"AND name LIKE '{_PGVECTOR_PREFIX}%'"
        )
        known = frozenset(name for (name,) in helper.fetchall())
    finally:
        helper.close()
    conn.info[_KNOWN_KEY] = known
    return known


def _supported(conn: Connection, settings: Settings) -> Settings:
    """``settings`` without the pgvector ones the server lacks, which are warned about."""
    if not any(name.startswith(_PGVECTOR_PREFIX) for name, _ in settings):
        return settings
    known = pgvector_settings(conn)
    missing = [
        name for name, _ in settings if name.startswith(_PGVECTOR_PREFIX) and name not in known
    ]
    if not missing:
        return settings
    warnings.warn(
        f"the database's pgvector has no {', '.join(missing)} (pgvector 0.8 added iterative"
        " index scans): the search runs without, and a filtered one may return fewer than k"
        " rows; ALTER EXTENSION vector UPDATE after upgrading pgvector",
        PgvectorFeatureWarning,
        stacklevel=2,
    )
    return tuple((name, value) for name, value in settings if name not in missing)


def _apply(conn: Connection, settings: Settings, local: bool) -> list[tuple[str, str | None]]:
    """Make ``settings``; returns the previous value of each one that changed."""
    settings = _supported(conn, settings)
    if not settings:
        return []
    params: list[Any] = []
    for name, value in settings:
        params += [name, name, value, local]
    helper = _dbapi_connection(conn).cursor()
    try:
        helper.execute(_set_sql(_placeholders(conn, len(params))), params)
        row = helper.fetchone()
    finally:
        helper.close()
    assert row is not None
    return [
        (name, row[2 * i])
        for i, (name, value) in enumerate(settings)
        if row[2 * i] != value
    ]


def _restore(conn: Connection, previous: Sequence[tuple[str, str | None]], local: bool) -> None:
    params: list[Any] = []
    for name, value in previous:
        params += [name, value, local]
    helper = _dbapi_connection(conn).cursor()
    try:
        helper.execute(_restore_sql(_placeholders(conn, len(params))), params)
    finally:
        helper.close()


def _dbapi_connection(conn: Connection) -> Any:
    """The pool's DBAPI connection, not ``cursor.connection``: asyncio drivers' adapted
    cursors have no ``connection`` attribute."""
    return conn.connection.dbapi_connection
