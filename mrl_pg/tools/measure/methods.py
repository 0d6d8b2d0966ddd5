"""The searches a bench compares: each a function from a query vector to the ids it found, and
a way to ask the server how long that search's statement took to execute.

Every method makes its settings the same way, in one round trip per search: on an autocommit
connection, one statement whose one-row subquery makes the settings with ``set_config(name,
value, true)`` (local to the statement's implicit transaction) and gates the index scan
through a ``LATERAL`` join, so that PostgreSQL makes them before the scan starts. That is what
``mrl_search()`` does; the hand-written statements here are written the same way, as a careful
user would (``BEGIN; SET LOCAL ...; SELECT ...; COMMIT`` costs four round trips instead).

- ``exact``: a full scan ordered by the exact distance. Turning index scans off is a planner
  setting, which a statement cannot make for itself, so ``exact`` runs on a connection of its
  own whose session has ``enable_indexscan = off`` (set once, when it opens).
- ``full_hnsw``: the same statement served by an HNSW index on the full vectors, at a given
  ``hnsw.ef_search``.
- ``handwritten``: the two-stage statement written by hand: an inner ``ORDER BY`` of the prefix
  distance with ``LIMIT`` candidates (the query's prefix computed on the client), then the
  candidates reranked by the full distance; settings as ``mrl_search`` would make them.
- ``mrl_search``: the library's public API on the same table, on a SQLAlchemy connection in
  autocommit mode.

The hand-written ones are psycopg 3 with pgvector's ``register_vector``, vectors sent as binary
parameters. Server-side execution time is the ``Execution Time`` of ``EXPLAIN (ANALYZE, TIMING
OFF, FORMAT JSON)`` run on the very statement and parameters a search sends (per-node timing
off, so that clock reads do not inflate the total).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector.psycopg import register_vector
from psycopg import sql
from sqlalchemy import Connection, Engine, event, select

from mrl_pg.prefix.declare import Prefix
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.search.defaults import statement_settings
from mrl_pg.search.hnsw_settings import Settings
from mrl_pg.search.statement import mrl_search
from mrl_pg.tools.measure.scratch import FULL_COLUMN, ScratchTable
from mrl_pg.tools.synthetic import normalize

Query = npt.NDArray[np.float32]

EXPLAIN = "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) "
#: The planner setting that makes ``exact`` a full scan, made for its connection's session.
EXACT_SESSION: Settings = (("enable_indexscan", "off"),)


@dataclass(frozen=True)
class Searcher:
    """One method at one setting: ``search`` runs it, ``execution_ms`` runs it under
    ``EXPLAIN ANALYZE`` and returns the server's execution time in milliseconds."""

    search: Callable[[Query], list[int]]
    execution_ms: Callable[[Query], float]


@contextmanager
def psycopg_connection(engine: Engine, session: Settings = ()) -> Iterator[Any]:
    """A plain psycopg 3 connection to ``engine``'s database in autocommit mode, with
    pgvector's types and the session settings ``session``; closed (not pooled) afterwards."""
    raw: Any = engine.raw_connection()
    try:
        connection = raw.driver_connection
        register_vector(connection)
        connection.rollback()
        connection.autocommit = True
        for name, value in session:
            connection.execute("SELECT set_config(%s, %s, false)", (name, value))
        yield connection
    finally:
        raw.detach()
        raw.close()


@contextmanager
def autocommit_connection(engine: Engine) -> Iterator[Connection]:
    """A SQLAlchemy connection in autocommit mode: every statement its own transaction."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def exact(connection: Any, scratch: ScratchTable, k: int) -> Searcher:
    """A full scan ordered by the exact distance; ``connection`` must have index scans off
    (``psycopg_connection(engine, EXACT_SESSION)``)."""
    statement = sql.SQL("SELECT id FROM {table} {nearest}").format(
        table=sql.SQL(scratch.qualified_name), nearest=_nearest_by_full(scratch, k)
    )
    return _searcher(connection, statement, _full_params)


def full_hnsw(connection: Any, scratch: ScratchTable, k: int, ef_search: int) -> Searcher:
    """The nearest ``k`` by the full distance, served by an HNSW index on the full vectors."""
    statement = sql.SQL(
        "SELECT c.id FROM {settings} CROSS JOIN LATERAL (SELECT id FROM {table} "
        "WHERE s.applied IS NOT NULL {nearest}) AS c"
    ).format(
        settings=settings_subquery((("hnsw.ef_search", str(ef_search)),)),
        table=sql.SQL(scratch.qualified_name),
        nearest=_nearest_by_full(scratch, k),
    )
    return _searcher(connection, statement, _full_params)


def _nearest_by_full(scratch: ScratchTable, k: int) -> sql.Composed:
    """``ORDER BY`` the full vector's distance to the query, ``LIMIT k``."""
    return sql.SQL("ORDER BY {full} {op} {query} LIMIT {k}").format(
        full=sql.Identifier(FULL_COLUMN),
        op=sql.SQL(scratch.distance.operator),
        query=_full_query_sql(scratch),
        k=sql.Literal(k),
    )


def handwritten(
    connection: Any, scratch: ScratchTable, prefix: Prefix, k: int, candidates: int
) -> Searcher:
    """Two stages in one statement: ``candidates`` rows by the prefix index, then the ``k``
    nearest of them by the full distance; the settings ``mrl_search`` makes for
    ``candidates``."""
    spec = prefix.spec
    statement = sql.SQL(
        "SELECT c.id FROM {settings} CROSS JOIN LATERAL (SELECT id, {full} FROM {table} "
        "WHERE s.applied IS NOT NULL ORDER BY {prefix} {op} {query_prefix} "
        "LIMIT {candidates}) AS c ORDER BY c.{full} {full_op} {query} LIMIT {k}"
    ).format(
        settings=settings_subquery(prefix_settings(candidates)),
        full=sql.Identifier(FULL_COLUMN),
        table=sql.SQL(scratch.qualified_name),
        prefix=sql.Identifier(prefix.name),
        op=sql.SQL(spec.index_operator),
        query_prefix=_query_prefix_sql(spec.storage, spec.dims),
        candidates=sql.Literal(candidates),
        full_op=sql.SQL(spec.distance.operator),
        query=_full_query_sql(scratch),
        k=sql.Literal(k),
    )
    dims = spec.dims
    unit_prefix = spec.distance is Distance.INNER_PRODUCT and spec.storage is not Storage.BIT

    def params(query: Query) -> tuple[Query, Query]:
        head = query[:dims]
        if unit_prefix:
            head = normalize(head[None, :])[0]
        return head, query

    return _searcher(connection, statement, params)


def library(conn: Connection, scratch: ScratchTable, prefix: Prefix, k: int,
            candidates: int) -> Searcher:
    """``mrl_search(select(table.c.id), query, k, prefix=..., candidates=...)`` on ``conn``,
    a connection in autocommit mode (:func:`autocommit_connection`)."""
    target = select(scratch.table.c.id)

    def search(query: Query) -> list[int]:
        statement = mrl_search(target, query, k, prefix=prefix.name, candidates=candidates)
        return [int(i) for i in conn.execute(statement).scalars()]

    def execution_ms(query: Query) -> float:
        with _last_statement(conn) as sent:
            search(query)
        statement, parameters = sent[-1]
        with conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(EXPLAIN + statement, parameters, prepare=False)
            return _execution_time(cursor.fetchone())

    return Searcher(search, execution_ms)


def prefix_settings(candidates: int) -> Settings:
    """The pgvector settings ``mrl_search`` makes for an unfiltered search of ``candidates``
    candidates (``hnsw.ef_search`` of at least the candidates, ...)."""
    return statement_settings(candidates, False, None, None, None)


def ef_search_of(settings: Settings) -> int:
    return int(dict(settings)["hnsw.ef_search"])


def settings_subquery(settings: Settings) -> sql.Composed:
    """``(SELECT concat(set_config(name, value, true), ...) AS applied) AS s``: the one-row
    subquery that makes ``settings`` when PostgreSQL reads it, ``concat`` evaluating its
    arguments in order."""
    calls = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(sql.Literal(name), sql.Literal(value))
        for name, value in settings
    )
    return sql.SQL("(SELECT concat({}) AS applied) AS s").format(calls)


@contextmanager
def _last_statement(conn: Connection) -> Iterator[list[tuple[str, Any]]]:
    """The statements (with their parameters, as the driver gets them) ``conn`` sends."""
    sent: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(conn, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(conn, "before_cursor_execute", record)


def _full_query_sql(scratch: ScratchTable) -> sql.Composed:
    return sql.SQL("CAST(%b AS {}({}))").format(
        sql.SQL(scratch.full_type_name), sql.Literal(scratch.dataset.dims)
    )


def _query_prefix_sql(storage: Storage, dims: int) -> sql.Composed:
    if storage is Storage.BIT:
        return sql.SQL("CAST(binary_quantize(CAST(%b AS vector({}))) AS bit({}))").format(
            sql.Literal(dims), sql.Literal(dims)
        )
    return sql.SQL("CAST(%b AS {}({}))").format(sql.SQL(storage.value), sql.Literal(dims))


def _full_params(query: Query) -> tuple[Query]:
    return (query,)


def _execution_time(row: Any) -> float:
    return float(row[0][0]["Execution Time"])


def _searcher(
    connection: Any, statement: sql.Composed, params: Callable[[Query], tuple[Query, ...]]
) -> Searcher:
    explained = sql.SQL(EXPLAIN) + statement

    def search(query: Query) -> list[int]:
        with connection.cursor() as cursor:
            cursor.execute(statement, params(query))
            return [int(row[0]) for row in cursor.fetchall()]

    def execution_ms(query: Query) -> float:
        with connection.cursor() as cursor:
            cursor.execute(explained, params(query), prepare=False)
            return _execution_time(cursor.fetchone())

    return Searcher(search, execution_ms)
