"""``hnsw.ef_search`` against candidates: recall@10 and q/s of ``mrl_search`` over a grid.

    python benchmarks/ef_search_sweep.py --vectors vectors.npy --queries queries.npy
        [--prefix 64,128] [--candidates 20,40,80] [--repeats 3] [--query-count N]
    python benchmarks/ef_search_sweep.py [--rows 100000] [--dims 1536] [--prefix 256]

Loads the vectors (a ``.npy`` file, with a ``.npy`` of queries, or else the MRL-like generator
of ``mrl_pg.synthetic``) into a table of a schema of its own (dropped afterwards), with a
``halfvec`` prefix column and its HNSW index per ``--prefix`` size, built after the load.
For every prefix and candidate count C it runs ``mrl_search(..., candidates=C,
ef_search=E)`` for E in C, 1.5 C, 2 C, 3 C and C + 40, and ``mrl_search`` with neither
option (the defaults), over every query, on one autocommit SQLAlchemy connection, every
configuration once per repeat (interleaved); q/s is the median over the repeats, recall@10
is against exact numpy ground truth. ``exact`` is the recall the prefix would give with an
exact first stage (the C nearest by the prefix, reranked): the ceiling that ef_search
approaches. ``x ef=C`` is the q/s over that of ef_search = C at the same candidate count.

The database is ``MRL_PG_DSN`` if set, else the embedded server.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from pgvector.sqlalchemy import VECTOR
from search_timing import WARMUP, run_queries
from sqlalchemy import BigInteger, Column, MetaData, Table, text

from mrl_pg import add_prefix_column
from mrl_pg.load import copy_vectors
from mrl_pg.prefix.spec import Distance
from mrl_pg.sqltext import TableRef
from mrl_pg.tools.measure.prefix_recall import prefix_recall
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, help="a (rows, dims) .npy file")
    parser.add_argument("--queries", type=Path, help="a .npy file of queries, with --vectors")
    parser.add_argument("--rows", type=int, default=100_000, help="generated rows")
    parser.add_argument("--dims", type=int, default=1536, help="generated dimensions")
    parser.add_argument("--prefix", default="256", help="prefix sizes (default 256)")
    parser.add_argument("--candidates", default="20,40,80", help="default 20,40,80")
    parser.add_argument("--query-count", type=int, default=None,
                        help="queries to run (default: every query of --queries, else 200)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    vectors, queries, source = load(args)
    prefixes = [int(p) for p in args.prefix.split(",")]
    counts = [int(c) for c in args.candidates.split(",")]
    truth = exact_neighbors(vectors, queries, K)
    ceiling = {f.dims: dict(zip(f.candidates, f.mean(), strict=True))
               for f in prefix_recall(vectors, queries, prefixes, counts, K, Distance.COSINE)}
    rows, dims = vectors.shape
    table = Table(
        "sweep_items",
        MetaData(),
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("embedding", VECTOR(dims)),
    )
    for size in prefixes:
        add_prefix_column(table, "embedding", size, name=f"halfvec_{size}")
    configs: list[tuple[int, int | None, int | None]] = [
        (size, count, ef) for size in prefixes for count in counts for ef in ef_ladder(count)
    ] + [(size, None, None) for size in prefixes]
    print(f"{source}: {rows:,} rows x {dims} dims, halfvec prefixes {prefixes}; "
          f"{len(queries)} queries x {args.repeats} repeats; load average at start "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    with scratch_schema(database_url(), "sweep", options="-c maintenance_work_mem=1GB") as engine:
        indexes = list(table.indexes)
        table.indexes.clear()
        with engine.begin() as conn:
            table.create(conn)
            copy_vectors(conn, table, "embedding", vectors, {"id": range(rows)})
        table.indexes.update(indexes)
        for index in indexes:
            started = time.perf_counter()
            with engine.begin() as conn:
                index.create(conn)
            print(f"  index {index.name}: built in {time.perf_counter() - started:.1f} s",
                  flush=True)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {TableRef(table.name).sql}"))
        for config in configs:
            run_queries(engine, table, queries[:WARMUP], options(*config))
        times: dict[tuple[int, int | None, int | None], list[float]] = {c: [] for c in configs}
        recalls: dict[tuple[int, int | None, int | None], float] = {}
        for _ in range(args.repeats):
            for config in configs:
                elapsed, found = run_queries(engine, table, queries, options(*config))
                times[config].append(elapsed)
                recalls[config] = recall_at_k(found, truth)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    qps = {c: len(queries) / statistics.median(t) for c, t in times.items()}
    print(f"{'prefix':>6} {'cand':>5} {'ef':>5} {'recall':>7} {'exact':>6} {'q/s':>7} "
          f"{'x ef=C':>7}")
    for size, count, ef in configs:
        if count is None:
            print(f"{size:>6} {'dflt':>5} {'dflt':>5} {recalls[size, None, None]:>7.3f} "
                  f"{'':>6} {qps[size, None, None]:>7.0f}")
            continue
        base = qps[size, count, count]
        print(f"{size:>6} {count:>5} {ef:>5} {recalls[size, count, ef]:>7.3f} "
              f"{ceiling[size][count]:>6.3f} {qps[size, count, ef]:>7.0f} "
              f"{qps[size, count, ef] / base:>7.2f}")


def load(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    if args.vectors is not None:
        vectors = np.load(args.vectors).astype(np.float32)
        queries = np.load(args.queries).astype(np.float32)[: args.query_count]
        return vectors, queries, args.vectors.name
    vectors = mrl_like_vectors(args.rows, args.dims, seed=1)
    queries = queries_near(vectors, args.query_count or 200, seed=2)
    return vectors, queries, "mrl_pg.synthetic"


def ef_ladder(count: int) -> list[int]:
    """ef_search values measured at ``count`` candidates: C, 1.5 C, 2 C, 3 C, C + 40."""
    values = {count, math.ceil(1.5 * count), 2 * count, 3 * count, count + 40}
    return sorted({min(v, 1000) for v in values})


def options(size: int, count: int | None, ef: int | None) -> dict[str, Any]:
    chosen: dict[str, Any] = {"prefix": f"halfvec_{size}"}
    if count is not None:
        chosen.update(candidates=count, ef_search=ef)
    return chosen


if __name__ == "__main__":
    main()
