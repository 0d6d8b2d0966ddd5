"""The searches a bench compares, each a function from a query vector to the ids it found.

``exact``, ``full_hnsw`` and ``handwritten`` are SQL as a pgvector user writes it by hand:
psycopg 3 with pgvector's ``register_vector``, the vectors sent as binary parameters, and
settings made with ``SET LOCAL`` in a transaction per query. ``handwritten`` is the two-stage
statement written by hand (an inner ``ORDER BY`` of the prefix distance with ``LIMIT``
candidates, the query's prefix computed on the client, then the candidates reranked by the
full distance); ``mrl_search`` is the library's public API on the same table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector.psycopg import register_vector
from psycopg import sql
from sqlalchemy import Engine, select

from mrl_pg.prefix.declare import Prefix
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.search.defaults import statement_settings
from mrl_pg.search.hnsw_settings import Settings
from mrl_pg.search.statement import mrl_search
from mrl_pg.tools.measure.scratch import FULL_COLUMN, ScratchTable
from mrl_pg.tools.synthetic import normalize

Query = npt.NDArray[np.float32]
Search = Callable[[Query], list[int]]


@contextmanager
def psycopg_connection(engine: Engine) -> Iterator[Any]:
    """A plain psycopg 3 connection to ``engine``'s database, with pgvector's types."""
    raw: Any = engine.raw_connection()
    try:
        connection = raw.driver_connection
        register_vector(connection)
        connection.rollback()
        yield connection
    finally:
        raw.close()


def exact(connection: Any, scratch: ScratchTable, k: int) -> Search:
    """A full scan ordered by the exact distance (index scans turned off)."""
    statement = _full_order(scratch, k)
    return _searcher(connection, statement, (("enable_indexscan", "off"),), _full_params)


def full_hnsw(connection: Any, scratch: ScratchTable, k: int, ef_search: int) -> Search:
    """The same statement, served by an HNSW index on the full vectors."""
    statement = _full_order(scratch, k)
    return _searcher(
        connection, statement, (("hnsw.ef_search", str(ef_search)),), _full_params
    )


def handwritten(
    connection: Any, scratch: ScratchTable, prefix: Prefix, k: int, candidates: int
) -> Search:
    """Two stages in one statement: ``candidates`` rows by the prefix index, then the ``k``
    nearest of them by the full distance."""
    spec = prefix.spec
    operator = sql.SQL(spec.index_operator)
    full_op = sql.SQL(spec.distance.operator)
    statement = sql.SQL(
        "SELECT id FROM (SELECT id, {full} FROM {table} ORDER BY {prefix} {op} {query_prefix} "
        "LIMIT {candidates}) AS c ORDER BY c.{full} {full_op} {query} LIMIT {k}"
    ).format(
        full=sql.Identifier(FULL_COLUMN),
        table=sql.SQL(scratch.qualified_name),
        prefix=sql.Identifier(prefix.name),
        op=operator,
        query_prefix=_query_prefix_sql(spec.storage, spec.dims),
        candidates=sql.Literal(candidates),
        full_op=full_op,
        query=_full_query_sql(scratch),
        k=sql.Literal(k),
    )
    settings = statement_settings(candidates, False, None, None, None)
    dims = spec.dims
    unit_prefix = spec.distance is Distance.INNER_PRODUCT and spec.storage is not Storage.BIT

    def params(query: Query) -> tuple[Query, Query]:
        head = query[:dims]
        if unit_prefix:
            head = normalize(head[None, :])[0]
        return head, query

    return _searcher(connection, statement, settings, params)


def library(engine_connection: Any, scratch: ScratchTable, prefix: Prefix, k: int,
            candidates: int) -> Search:
    """``mrl_search(select(table.c.id), query, k, prefix=..., candidates=...)``."""
    target = select(scratch.table.c.id)

    def search(query: Query) -> list[int]:
        statement = mrl_search(target, query, k, prefix=prefix.name, candidates=candidates)
        ids = [int(i) for i in engine_connection.execute(statement).scalars()]
        engine_connection.commit()
        return ids

    return search


def _full_order(scratch: ScratchTable, k: int) -> sql.Composed:
    return sql.SQL("SELECT id FROM {table} ORDER BY {full} {op} {query} LIMIT {k}").format(
        table=sql.SQL(scratch.qualified_name),
        full=sql.Identifier(FULL_COLUMN),
        op=sql.SQL(scratch.distance.operator),
        query=_full_query_sql(scratch),
        k=sql.Literal(k),
    )


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


def _searcher(
    connection: Any,
    statement: sql.Composed,
    settings: Settings,
    params: Callable[[Query], tuple[Query, ...]],
) -> Search:
    set_local = [
        sql.SQL("SET LOCAL {} = {}").format(sql.SQL(name), sql.Literal(value))
        for name, value in settings
    ]

    def search(query: Query) -> list[int]:
        with connection.transaction(), connection.cursor() as cursor:
            for command in set_local:
                cursor.execute(command)
            cursor.execute(statement, params(query))
            return [int(row[0]) for row in cursor.fetchall()]

    return search
