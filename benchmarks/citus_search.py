"""Search on a table sharded by Citus: mrl_pg's distributed statement next to the two-stage
statement that ships full vectors, and brute force; across all shards and routed to one.

    python benchmarks/citus_search.py [--rows 200000] [--dims 768] [--prefix 128]
        [--shards 32] [--tenants 100] [--queries 100] [--candidates 80 160]
        [--library-only] [--keep]

The database is ``MRL_PG_CITUS_DSN`` (default: the local cluster of
``../shared/citus/citus-cluster.sh``, ``postgresql+psycopg://postgres@127.0.0.1:9700/postgres``).
The table, in schema ``mrl_pg_bench_citus``, is distributed by ``tenant`` (``id % tenants``),
loaded, then given its HNSW index; ``--keep`` keeps it for the next run, which reuses it when
its size matches. Each method runs every query once to warm up, then once timed, on one
connection in autocommit mode; recall@k is against exact numpy neighbours. Bytes shipped per
query are what Citus' ``EXPLAIN ANALYZE`` reports as received from the workers (``Tuple data
received from nodes``), averaged over a few queries.

- ``mrl_pg``: ``mrl_search`` (the distributed form: shards send ids and exact distances),
  with its default candidates and with each count of ``--candidates``;
- ``vectors shipped``: the same two stages written as one node would, the first stage carrying
  the full vectors to the coordinator, which reranks them (the statement the issue measured);
- ``brute force``: ``ORDER BY embedding <=> q LIMIT k``, exact, each shard scanning all rows.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    text,
)
from sqlalchemy.schema import CreateSchema

from mrl_pg import add_prefix_column, mrl_search
from mrl_pg.citus import distribute_table
from mrl_pg.load import copy_vectors
from mrl_pg.sqltext import ident
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k

SCHEMA = "mrl_pg_bench_citus"
DEFAULT_DSN = "postgresql+psycopg://postgres@127.0.0.1:9700/postgres"
K = 10
Vectors = npt.NDArray[np.float32]
#: Runs one query (on one tenant's rows, or all) and returns the rows, the id first.
Search = Callable[[Connection, Vectors, int | None], list[Any]]


def make_table(dims: int, prefix: int) -> Table:
    table = Table(
        "items",
        MetaData(schema=SCHEMA),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("tenant", Integer, primary_key=True, autoincrement=False),
        Column("embedding", VECTOR(dims), nullable=False),
    )
    add_prefix_column(table, "embedding", prefix)
    return table


def prepare(engine: Engine, table: Table, vectors: Vectors, shards: int, tenants: int) -> None:
    """Create, distribute, load and index the table, unless a kept one has the same rows."""
    with engine.begin() as conn:
        if conn.execute(text("SELECT to_regclass(:t)"), {"t": f"{SCHEMA}.items"}).scalar():
            count = conn.execute(text(f"SELECT count(*) FROM {ident(SCHEMA)}.items")).scalar()
            if count == len(vectors):
                print(f"reusing {SCHEMA}.items ({count} rows)")
                return
        conn.execute(text(f"DROP SCHEMA IF EXISTS {ident(SCHEMA)} CASCADE"))
        conn.execute(CreateSchema(SCHEMA))
        table.create(conn)
        for index in table.indexes:
            index.drop(conn)
        distribute_table(conn, table, "tenant", shard_count=shards)
    started = time.perf_counter()
    ids = np.arange(len(vectors))
    for start in range(0, len(vectors), 20_000):
        chunk = ids[start : start + 20_000]
        with engine.begin() as conn:
            copy_vectors(conn, table, "embedding", vectors[chunk],
                         {"id": chunk.tolist(), "tenant": (chunk % tenants).tolist()})
    print(f"loaded {len(vectors)} rows in {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    with engine.begin() as conn:
        for index in table.indexes:
            index.create(conn)
        conn.execute(text(f"ANALYZE {ident(SCHEMA)}.items"))
    print(f"built the HNSW indexes of {shards} shards in {time.perf_counter() - started:.0f} s")


def by_library(table: Table, candidates: int | None) -> Search:
    def run(conn: Connection, query: Vectors, tenant: int | None) -> list[Any]:
        base: Any = table.select().with_only_columns(table.c.id)
        if tenant is not None:
            base = base.where(table.c.tenant == tenant)
        return list(conn.execute(mrl_search(base, query, K, candidates=candidates)))

    return run


def by_sql(statement: str) -> Search:
    """Hand-written SQL: ``{table}`` and ``{where}`` (the tenant filter) filled in."""

    def run(conn: Connection, query: Vectors, tenant: int | None) -> list[Any]:
        where = "" if tenant is None else "WHERE tenant = :tenant"
        sql = text(statement.format(table=f"{ident(SCHEMA)}.items", where=where))
        return list(conn.execute(sql, {"q": str(query.tolist()), "tenant": tenant}))

    return run


def vectors_shipped(prefix: int) -> Search:
    return by_sql(
        "SELECT c.id FROM (SELECT id, embedding FROM {table} {where} "
        f"ORDER BY embedding_{prefix} <=> CAST(subvector(CAST(:q AS vector), 1, {prefix}) "
        f"AS halfvec({prefix})) LIMIT 40) AS c "
        f"ORDER BY c.embedding <=> CAST(:q AS vector) LIMIT {K}"
    )


BRUTE_FORCE = by_sql(
    f"SELECT id FROM {{table}} {{where}} ORDER BY embedding <=> CAST(:q AS vector) LIMIT {K}"
)
_UNITS = {"bytes": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3}
_RECEIVED = re.compile(r"Tuple data received from nodes: ([\d.]+) (bytes|kB|MB|GB)")


def shipped_bytes(engine: Engine, run: Search, queries: Vectors, tenant: int | None) -> float:
    """Mean bytes the coordinator received from the workers per query, from ``EXPLAIN
    ANALYZE`` of the search statement (mrl_pg's settings block is not explained)."""

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> Any:
        return "EXPLAIN (ANALYZE, TIMING OFF, SUMMARY OFF) " + statement, parameters

    received = []
    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", explain, retval=True)
        for query in queries[:5]:
            plan = "\n".join(str(row[0]) for row in run(conn, query, tenant))
            received.append(
                sum(float(n) * _UNITS[unit] for n, unit in _RECEIVED.findall(plan))
            )
    return float(np.mean(received))


def measure(
    engine: Engine, run: Search, queries: Vectors, tenants: list[int | None], truth: Any
) -> dict[str, float]:
    with engine.connect() as conn:
        for query, tenant in zip(queries, tenants, strict=True):
            run(conn, query, tenant)
        found, times = [], []
        for query, tenant in zip(queries, tenants, strict=True):
            started = time.perf_counter()
            rows = run(conn, query, tenant)
            times.append(time.perf_counter() - started)
            found.append([row[0] for row in rows])
    return {
        "recall": recall_at_k(found, truth),
        "p50": 1000 * float(np.percentile(times, 50)),
        "p99": 1000 * float(np.percentile(times, 99)),
        "bytes": shipped_bytes(engine, run, queries, tenants[0]),
    }


def tenant_neighbors(vectors: Vectors, query: Vectors, kept: npt.NDArray[Any]) -> Any:
    """Exact top-``K`` ids of ``query`` among the rows ``kept``."""
    return kept[exact_neighbors(vectors[kept], query[None], K)[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--prefix", type=int, default=128)
    parser.add_argument("--shards", type=int, default=32)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--candidates", type=int, nargs="*", default=[],
                        help="also run mrl_search with these candidate counts")
    parser.add_argument("--library-only", action="store_true",
                        help="measure mrl_search only (brute force takes seconds per query)")
    parser.add_argument("--keep", action="store_true", help="keep the table for the next run")
    args = parser.parse_args()

    # autocommit, as most searches run: mrl_pg's searches then take a transaction of their own
    engine = create_engine(
        os.environ.get("MRL_PG_CITUS_DSN", DEFAULT_DSN), isolation_level="AUTOCOMMIT"
    )
    table = make_table(args.dims, args.prefix)
    vectors = mrl_like_vectors(args.rows, args.dims, seed=3)
    queries = queries_near(vectors, args.queries, seed=4)
    prepare(engine, table, vectors, args.shards, args.tenants)
    ids = np.arange(args.rows)
    all_truth = exact_neighbors(vectors, queries, K)
    tenants = [i % args.tenants for i in range(args.queries)]
    tenant_truth = np.array([
        tenant_neighbors(vectors, q, ids[ids % args.tenants == t])
        for q, t in zip(queries, tenants, strict=True)
    ])
    methods = {"mrl_pg": by_library(table, None)}
    methods.update({f"mrl_pg c={n}": by_library(table, n) for n in args.candidates})
    if not args.library_only:
        methods.update(
            {"vectors shipped": vectors_shipped(args.prefix), "brute force": BRUTE_FORCE}
        )
    print(f"{args.rows} x {args.dims}, prefix {args.prefix} halfvec, {args.shards} shards, "
          f"{args.queries} queries, k={K}")
    print(f"{'method':<18}{'scope':<14}{'recall@10':>10}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'kB/query':>10}")
    results = {}
    for scope, scope_tenants, truth in (
        ("all shards", [None] * args.queries, all_truth),
        ("one tenant", tenants, tenant_truth),
    ):
        for name, run in methods.items():
            figures = measure(engine, run, queries, scope_tenants, truth)
            results[name, scope] = figures
            print(f"{name:<18}{scope:<14}{figures['recall']:>10.3f}{figures['p50']:>9.1f}"
                  f"{figures['p99']:>9.1f}{figures['bytes'] / 1024:>10.1f}")
    if ("brute force", "all shards") in results:
        brute = results["brute force", "all shards"]["p50"]
        for name in methods:
            print(f"p50 of {name} across all shards / brute force: "
                  f"{results[name, 'all shards']['p50'] / brute:.2f}")
    if not args.keep:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {ident(SCHEMA)} CASCADE"))
    engine.dispose()


if __name__ == "__main__":
    main()
