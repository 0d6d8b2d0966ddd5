"""Benchmark exact search, full-dimension HNSW, hand-written two-stage SQL and mrl_search.

On one data set, in one run: an exact full scan; an HNSW index on the full vectors at several
``hnsw.ef_search`` values; and, for every prefix size x storage, the prefix's HNSW index
searched by hand-written two-stage SQL and by ``mrl_search()`` at several candidate counts.
Each reports recall@k against exact numpy ground truth, queries/s and p50/p99 latency (one
client, after a warm-up), and the index's size and build time. Then ratios at matched recall.

The data is the MRL-like generator (``--rows --dims``), a ``.npy`` file (``--vectors``, queries
held out unless ``--queries`` is given) or a column of an existing table (``--table
--column``). The bench always runs on a scratch copy: a schema ``mrl_pg_bench_*`` created in
the database for the run and dropped at its end; a user's table is only read, once.
The database is ``--dsn``, else ``MRL_PG_DSN``, else the embedded server.

``mrl_search`` is measured as ``mrl_search(select(table.c.id), query, k, prefix=...,
candidates=...)``, returning the ids as the hand-written SQL does.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from mrl_pg.errors import SearchParameterError
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.tools.measure import methods, report
from mrl_pg.tools.measure.arguments import (
    add_source_arguments,
    comma_list,
    dataset_from_args,
    engine_from_args,
)
from mrl_pg.tools.measure.inputs import Dataset
from mrl_pg.tools.measure.scratch import HNSWParameters, ScratchTable
from mrl_pg.tools.measure.timing import Result, summarise, time_queries
from mrl_pg.tools.server import create_vector_extension
from mrl_pg.tools.synthetic import exact_neighbors


def configure(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, default_dims=768)
    runs = parser.add_argument_group("what to measure")
    runs.add_argument("--prefix", type=comma_list(int), default=[64, 128, 256],
                      help="prefix sizes (default 64,128,256)")
    runs.add_argument("--candidates", type=comma_list(int), default=[20, 40, 100],
                      help="first-stage candidate counts (default 20,40,100)")
    runs.add_argument("--storage", type=comma_list(Storage.parse), default=[Storage.HALFVEC],
                      help="prefix storages: vector, halfvec, bit (default halfvec)")
    runs.add_argument("--ef-search", type=comma_list(int), default=[40, 100, 200],
                      help="hnsw.ef_search values for the full index (default 40,100,200)")
    runs.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    runs.add_argument("--distance", type=Distance.parse, default=Distance.COSINE,
                      help="cosine, inner_product or l2 (default cosine)")
    runs.add_argument("--m", type=int, default=16, help="HNSW m of every index")
    runs.add_argument("--ef-construction", type=int, default=64,
                      help="HNSW ef_construction of every index")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the results to this JSON file")
    out.add_argument("--plot", type=Path, help="write recall vs queries/s to this PNG")


def run(args: argparse.Namespace) -> int:
    bench(args)
    return 0


def bench(args: argparse.Namespace) -> list[Result]:
    """Measure everything ``args`` asks for, print the report, write the files."""
    engine: Engine | None = None

    def connect() -> Engine:
        nonlocal engine
        if engine is None:
            engine = engine_from_args(args)
        return engine

    try:
        dataset = dataset_from_args(args, connect)
        _check(args, dataset)
        print(f"data: {dataset.source}; {len(dataset.vectors)} rows x {dataset.dims} dims, "
              f"{len(dataset.queries)} queries, k={args.k}, {args.distance.value} distance")
        results = _measure(args, dataset, connect())
    finally:
        if engine is not None:
            engine.dispose()
    print(report.table(results))
    print(report.ratios(results))
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_json() for r in results], indent=2) + "\n")
    if args.plot is not None:
        from mrl_pg.tools.measure.plot import bench_plot

        title = f"{len(dataset.vectors)} x {dataset.dims}, {dataset.source}"
        bench_plot(results, args.plot, title)
    return results


def _check(args: argparse.Namespace, dataset: Dataset) -> None:
    dataset.check_k(args.k)
    if args.k < 1:
        raise SearchParameterError(f"k must be positive, got {args.k}")
    for count in args.candidates:
        if count < args.k:
            raise SearchParameterError(f"candidates ({count}) must be at least k ({args.k})")


def _measure(args: argparse.Namespace, dataset: Dataset, engine: Engine) -> list[Result]:
    create_vector_extension(engine)
    truth = exact_neighbors(dataset.vectors, dataset.queries, args.k, args.distance)
    prefixes = [(dims, storage) for storage in args.storage for dims in args.prefix]
    scratch = ScratchTable(engine, dataset, prefixes, args.distance,
                           HNSWParameters(args.m, args.ef_construction))
    k, queries = args.k, dataset.queries
    results: list[Result] = []

    def measure(search: Callable[..., list[int]], label: str, **fields: Any) -> None:
        timing = time_queries(search, queries, label)
        result = summarise(timing, truth, k=k, **fields)
        print(f"  {label}: recall {result.recall:.3f}, {result.qps:.0f} q/s", flush=True)
        results.append(result)

    scratch.create()
    try:
        with methods.psycopg_connection(engine) as raw, engine.connect() as conn:
            measure(methods.exact(raw, scratch, k), "exact", method="exact")
            _full_hnsw(args, scratch, raw, measure)
            for dims, storage in prefixes:
                prefix = scratch.prefix(dims, storage)
                index = scratch.prefix_index(prefix)
                built = scratch.build(index)
                print(f"  prefix index {dims} {storage.value}: {built.size_bytes / 1e6:.1f} MB "
                      f"in {built.build_s:.1f} s", flush=True)
                for count in args.candidates:
                    common = dict(prefix_dims=dims, storage=storage.value, candidates=count,
                                  ef_search=min(max(count, 40), 1000),
                                  index_bytes=built.size_bytes, build_s=built.build_s)
                    measure(methods.handwritten(raw, scratch, prefix, k, count),
                            f"handwritten {dims} {storage.value} c={count}",
                            method="handwritten", **common)
                    measure(methods.library(conn, scratch, prefix, k, count),
                            f"mrl_search {dims} {storage.value} c={count}",
                            method="mrl_search", **common)
                scratch.drop_index(index)
    finally:
        scratch.drop()
    return results


def _full_hnsw(
    args: argparse.Namespace,
    scratch: ScratchTable,
    raw: object,
    measure: Callable[..., None],
) -> None:
    limit = Storage.HALFVEC.index_limit if scratch.dataset.half else Storage.VECTOR.index_limit
    if scratch.dataset.dims > limit:
        print(f"  full_hnsw skipped: pgvector cannot index {scratch.dataset.dims} dims "
              f"of {scratch.full_type_name} (limit {limit})")
        return
    index = scratch.full_index()
    built = scratch.build(index)
    print(f"  full index: {built.size_bytes / 1e6:.1f} MB in {built.build_s:.1f} s", flush=True)
    for ef in args.ef_search:
        measure(methods.full_hnsw(raw, scratch, args.k, ef), f"full_hnsw ef_search={ef}",
                method="full_hnsw", storage=scratch.full_type_name, ef_search=ef,
                index_bytes=built.size_bytes, build_s=built.build_s)
    scratch.drop_index(index)
