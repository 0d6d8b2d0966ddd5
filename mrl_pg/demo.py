"""Run mrl_pg end to end on a demo table: add a prefix, search, compare with full HNSW.

Uses ``MRL_PG_DSN`` when set (the demo creates and drops its own table there), else starts
the embedded PostgreSQL server.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Select,
    Table,
    create_engine,
    select,
    text,
)

from mrl_pg.declare import add_prefix_column, prefixes_of
from mrl_pg.load import copy_vectors
from mrl_pg.search import mrl_search
from mrl_pg.server import create_vector_extension, database_url
from mrl_pg.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k

TABLE = "mrl_pg_demo_items"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="rows in the demo table")
    parser.add_argument("--dims", type=int, default=768, help="full vector dimensions")
    parser.add_argument("--prefix", type=int, default=128, help="prefix dimensions")
    parser.add_argument("--queries", type=int, default=100, help="queries to time")


def run(args: argparse.Namespace) -> int:
    engine = create_engine(database_url())
    create_vector_extension(engine)
    print(f"database: {engine.url.render_as_string(hide_password=True)}")
    metadata = MetaData()
    items = Table(
        TABLE,
        metadata,
        Column("id", Integer, primary_key=True),
        Column("embedding", VECTOR(args.dims)),
    )
    vectors = mrl_like_vectors(args.rows, args.dims)
    queries = queries_near(vectors, args.queries)
    try:
        _create_app_table(engine, items, vectors)
        _add_prefix(engine, items, args.prefix)
        _report(engine, items, vectors, queries)
    finally:
        with engine.begin() as conn:
            items.drop(conn, checkfirst=True)
        engine.dispose()
    return 0


def _create_app_table(engine: Engine, items: Table, vectors: npt.NDArray[np.float32]) -> None:
    started = time.perf_counter()
    with engine.begin() as conn:
        items.drop(conn, checkfirst=True)
        items.create(conn)
        copy_vectors(conn, items, "embedding", vectors, {"id": range(len(vectors))})
    rows, dims = vectors.shape
    print(f"1. app table {TABLE}: {rows} rows of {dims}-dim vectors "
          f"({time.perf_counter() - started:.1f} s)")


def _add_prefix(engine: Engine, items: Table, dims: int) -> None:
    started = time.perf_counter()
    column = add_prefix_column(items, "embedding", dims, storage="halfvec")
    (prefix,) = prefixes_of(items)
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        op.add_column(TABLE, column.copy())
        op.create_index(
            prefix.index_name,
            TABLE,
            [prefix.name],
            postgresql_using="hnsw",
            postgresql_with={"m": prefix.spec.m, "ef_construction": prefix.spec.ef_construction},
            postgresql_ops={prefix.name: prefix.spec.opclass},
        )
        conn.execute(text(f"ANALYZE {TABLE}"))
    print(f"2. added prefix {prefix.name}: first {dims} dims as halfvec, HNSW index "
          f"{_index_size(engine, prefix.index_name)} ({time.perf_counter() - started:.1f} s)")


def _report(
    engine: Engine,
    items: Table,
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
) -> None:
    truth = exact_neighbors(vectors, queries, 10)
    with engine.connect() as conn:
        rows = conn.execute(mrl_search(items, queries[0], k=5)).all()
        print("3. mrl_search(items, query, k=5):")
        for row in rows:
            print(f"     id={row.id:<8} distance={row.distance:.4f}")
        mrl = _timed(conn, lambda q: mrl_search(select(items.c.id), q, k=10), queries)

    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text(
            f"CREATE INDEX demo_full_hnsw ON {TABLE} USING hnsw (embedding vector_cosine_ops)"
        ))
    build = time.perf_counter() - started
    print(f"4. full-dimension HNSW index for comparison: {_index_size(engine, 'demo_full_hnsw')} "
          f"({build:.1f} s)")
    with engine.connect() as conn:
        distance = items.c.embedding.op("<=>")
        full = _timed(
            conn,
            lambda q: select(items.c.id).order_by(distance(q)).limit(10),
            queries,
        )
    print("5. recall@10 against exact search, latency over "
          f"{len(queries)} queries (one client):")
    for name, (found, latencies) in (("mrl_search", mrl), ("full-dim HNSW", full)):
        print(f"     {name:<14} recall@10={recall_at_k(found, truth):.3f}  "
              f"p50={np.percentile(latencies, 50):.2f} ms  "
              f"p99={np.percentile(latencies, 99):.2f} ms")


def _timed(
    conn: Connection,
    build: Callable[[npt.NDArray[np.float32]], Select[Any]],
    queries: npt.NDArray[np.float32],
) -> tuple[list[list[int]], list[float]]:
    found, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        ids: list[int] = list(conn.execute(build(query)).scalars())
        latencies.append((time.perf_counter() - started) * 1000)
        found.append(ids)
        conn.commit()
    return found, latencies


def _index_size(engine: Engine, index: str) -> str:
    with engine.connect() as conn:
        size = conn.execute(
            text("SELECT pg_size_pretty(pg_relation_size(CAST(:name AS regclass)))"),
            {"name": index},
        ).scalar_one()
    return str(size)
