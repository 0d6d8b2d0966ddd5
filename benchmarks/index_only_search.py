"""Stored against index-only prefixes, on the same data: heap size, index size, build time,
search q/s and recall.

    python benchmarks/index_only_search.py [--rows 100000] [--dims 1536] [--prefix 256]
        [--candidates 80] [--queries 200] [--repeats 5]

Loads the same MRL-like vectors (``mrl_pg.synthetic``) into two tables of a schema of its own
(dropped afterwards): ``stored_items`` with a stored ``halfvec`` prefix (a generated column and
its HNSW index) and ``index_only_items`` with an index-only one (the HNSW index on the prefix
expression). Both indexes are built the same way, after the load. Then each repeat runs every
query through ``mrl_search`` on each table, one autocommit SQLAlchemy connection per table
(same settings mechanism, same round trips), the tables interleaved so that noise from other
work on the machine hits them alike; q/s is the median over the repeats, and recall@10 is
checked against exact numpy ground truth. The database is ``MRL_PG_DSN`` if set, else the
embedded server.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from pgvector.sqlalchemy import VECTOR
from search_timing import WARMUP, run_queries
from sqlalchemy import BigInteger, Column, Engine, MetaData, Table, text

from mrl_pg import add_prefix_column
from mrl_pg.load import copy_vectors
from mrl_pg.sqltext import TableRef
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k


def make_table(metadata: MetaData, name: str, dims: int, prefix: int, stored: bool) -> Table:
    table = Table(
        name,
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("embedding", VECTOR(dims)),
    )
    add_prefix_column(table, "embedding", prefix, name="embedding_mrl", stored=stored)
    return table


def load(engine: Engine, table: Table, vectors: np.ndarray) -> float:
    """Create and fill ``table``, then build its HNSW index; the build's seconds."""
    indexes = list(table.indexes)
    table.indexes.clear()
    with engine.begin() as conn:
        table.create(conn)
        copy_vectors(conn, table, "embedding", vectors, {"id": range(len(vectors))})
    table.indexes.update(indexes)
    started = time.perf_counter()
    with engine.begin() as conn:
        for index in indexes:
            index.create(conn)
    elapsed = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM ANALYZE {TableRef(table.name).sql}"))
    return elapsed


def sizes(engine: Engine, table: Table) -> tuple[int, int, int]:
    """Bytes of the table's heap, of its TOAST table, and of its HNSW index."""
    (index,) = table.indexes
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT pg_relation_size(c.oid),"
                " coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),"
                " pg_relation_size(to_regclass(:index))"
                " FROM pg_class c WHERE c.oid = to_regclass(:table)"
            ),
            {"table": table.name, "index": index.name},
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--prefix", type=int, default=256)
    parser.add_argument("--candidates", type=int, default=80)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    vectors = mrl_like_vectors(args.rows, args.dims, seed=1)
    queries = queries_near(vectors, args.queries, seed=2)
    truth = exact_neighbors(vectors, queries, 10)
    metadata = MetaData()
    tables = {
        "stored": make_table(metadata, "stored_items", args.dims, args.prefix, stored=True),
        "index-only": make_table(metadata, "index_only_items", args.dims, args.prefix, False),
    }
    options = "-c maintenance_work_mem=1GB"
    print(
        f"{args.rows:,} rows x {args.dims} dims, halfvec prefix {args.prefix}, "
        f"{args.candidates} candidates, {args.queries} queries x {args.repeats} repeats",
        flush=True,
    )
    with scratch_schema(database_url(), "ionly", options=options) as engine:
        builds = {kind: load(engine, table, vectors) for kind, table in tables.items()}
        search_options = {"candidates": args.candidates}
        for table in tables.values():
            run_queries(engine, table, queries[:WARMUP], search_options)  # warm caches
        times: dict[str, list[float]] = {kind: [] for kind in tables}
        recalls: dict[str, float] = {}
        for _ in range(args.repeats):
            for kind, table in tables.items():
                elapsed, found = run_queries(engine, table, queries, search_options)
                times[kind].append(elapsed)
                recalls[kind] = recall_at_k(found, truth)
        qps: dict[str, float] = {}
        for kind, table in tables.items():
            heap, toast, index = sizes(engine, table)
            qps[kind] = args.queries / statistics.median(times[kind])
            print(
                f"  {kind:<10} heap {heap / 2**20:8.1f} MiB   TOAST {toast / 2**20:8.1f} MiB   "
                f"index {index / 2**20:7.1f} MiB   build {builds[kind]:6.1f} s   "
                f"{qps[kind]:7.1f} q/s   recall@10 {recalls[kind]:.3f}",
                flush=True,
            )
    print(f"index-only / stored: {qps['index-only'] / qps['stored']:.2f}x q/s")


if __name__ == "__main__":
    main()
