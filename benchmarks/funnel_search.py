"""A funnel (a ``bit`` prefix, then a ``halfvec`` one, then the full vectors) against each
prefix alone, on the same table: q/s and recall.

    python benchmarks/funnel_search.py [--rows 100000] [--dims 1536] [--bits 256]
        [--prefix 256] [--queries 200] [--repeats 5]

Loads MRL-like vectors (``mrl_pg.synthetic``) into a table of a schema of its own (dropped
afterwards) with two stored prefixes, a ``bit`` one of ``--bits`` dimensions and a ``halfvec``
one of ``--prefix``, builds both HNSW indexes after the load, then runs each method on every
query through ``mrl_search``, one autocommit SQLAlchemy connection, the methods interleaved in
each repeat; q/s is the median over the repeats, recall@10 against exact numpy ground truth:

- ``halfvec N``: the ``halfvec`` prefix alone, at 40 and 80 candidates;
- ``bit N``: the ``bit`` prefix alone, at 200 (its default) and 400 candidates;
- ``funnel``: ``prefix=[bit, halfvec]``, the bit stage's candidates narrowed by the halfvec
  prefix, then reranked, at 400 -> 80 and 800 -> 80 candidates.

The database is ``MRL_PG_DSN`` if set, else the embedded server.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from pgvector.sqlalchemy import VECTOR
from search_timing import WARMUP, run_queries
from sqlalchemy import BigInteger, Column, MetaData, Table, text

from mrl_pg import add_prefix_column
from mrl_pg.load import copy_vectors
from mrl_pg.sqltext import TableRef
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--bits", type=int, default=256)
    parser.add_argument("--prefix", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    vectors = mrl_like_vectors(args.rows, args.dims, seed=1)
    queries = queries_near(vectors, args.queries, seed=2)
    truth = exact_neighbors(vectors, queries, 10)
    table = Table(
        "funnel_items",
        MetaData(),
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("embedding", VECTOR(args.dims)),
    )
    bits = f"bit_{args.bits}"
    half = f"halfvec_{args.prefix}"
    add_prefix_column(table, "embedding", args.bits, name=bits, storage="bit")
    add_prefix_column(table, "embedding", args.prefix, name=half)
    methods: dict[str, dict[str, Any]] = {
        f"halfvec {args.prefix}, 40 candidates": {"prefix": half, "candidates": 40},
        f"halfvec {args.prefix}, 80 candidates": {"prefix": half, "candidates": 80},
        f"bit {args.bits}, 200 candidates": {"prefix": bits, "candidates": 200},
        f"bit {args.bits}, 400 candidates": {"prefix": bits, "candidates": 400},
        "funnel, 400 -> 80 candidates": {"prefix": [bits, half], "candidates": [400, 80]},
        "funnel, 800 -> 80 candidates": {"prefix": [bits, half], "candidates": [800, 80]},
    }
    print(
        f"{args.rows:,} rows x {args.dims} dims; bit {args.bits}, halfvec {args.prefix}; "
        f"{args.queries} queries x {args.repeats} repeats",
        flush=True,
    )
    options = "-c maintenance_work_mem=1GB"
    with scratch_schema(database_url(), "funnel", options=options) as engine:
        indexes = list(table.indexes)
        table.indexes.clear()
        with engine.begin() as conn:
            table.create(conn)
            copy_vectors(conn, table, "embedding", vectors, {"id": range(args.rows)})
        table.indexes.update(indexes)
        for index in indexes:
            started = time.perf_counter()
            with engine.begin() as conn:
                index.create(conn)
                size = conn.execute(
                    text("SELECT pg_relation_size(to_regclass(:i))"), {"i": index.name}
                ).scalar_one()
            print(
                f"  index {index.name}: built in {time.perf_counter() - started:.1f} s, "
                f"{size / 2**20:.1f} MiB",
                flush=True,
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {TableRef(table.name).sql}"))
        for method in methods.values():
            run_queries(engine, table, queries[:WARMUP], method)
        times: dict[str, list[float]] = {name: [] for name in methods}
        recalls: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, method in methods.items():
                elapsed, found = run_queries(engine, table, queries, method)
                times[name].append(elapsed)
                recalls[name] = recall_at_k(found, truth)
    baseline = args.queries / statistics.median(times[next(iter(methods))])
    for name in methods:
        qps = args.queries / statistics.median(times[name])
        print(
            f"  {name:<32} {qps:7.1f} q/s ({qps / baseline:.2f}x)   "
            f"recall@10 {recalls[name]:.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
