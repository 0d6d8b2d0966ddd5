"""Benchmark exact search, full-dimension HNSW, hand-written two-stage SQL and mrl_search.

On one data set, in one run: an exact full scan; an HNSW index on the full vectors at several
``hnsw.ef_search`` values; and, for every prefix size x storage, the prefix's HNSW index
searched by hand-written two-stage SQL and by ``mrl_search()`` at several candidate counts.
Each reports recall@k against exact numpy ground truth, queries/s and p50/p99 latency (one
client, after a warm-up), the server's execution time, and the index's size and build time.
Then each method's recall ceiling and the ratios at matched recall.

A fair harness: every method makes its settings the same way, in one round trip per search:
on an autocommit connection, inside its one statement (a one-row subquery calling
``set_config(name, value, true)`` that gates the index scan through a ``LATERAL`` join), the
way ``mrl_search`` does and a careful user writes it (:mod:`mrl_pg.tools.measure.methods`).
All indexes are built first; then ``--repeats`` times, every method/setting runs once over the
queries, the methods taking turns (in reverse order every other repeat, so that no method
always runs right after the one that read its pages into the buffer cache), so that other
work on the machine hits them alike; the report gives the median of the repeats. Server-side
time is the median ``Execution Time`` of ``EXPLAIN (ANALYZE)`` over a sample of the queries,
the methods taking turns query by query in the same way; ``shared_buffers`` is printed
against the table and index sizes (the bench does not change it).

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
import os
import statistics
from contextlib import ExitStack
from dataclasses import dataclass
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
from mrl_pg.tools.measure.scratch import BuiltIndex, DataSizes, HNSWParameters, ScratchTable
from mrl_pg.tools.measure.timing import Result, Timing, summarise, time_queries
from mrl_pg.tools.server import create_vector_extension
from mrl_pg.tools.synthetic import Matrix, exact_neighbors

#: Queries of each method/setting run under ``EXPLAIN ANALYZE`` for its server-side time.
EXPLAIN_SAMPLE = 20


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
    runs.add_argument("--repeats", type=int, default=3,
                      help="runs of every method/setting over the queries, methods taking "
                           "turns; the report gives their median (default 3)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, help="write the setup and results to this JSON file")
    out.add_argument("--plot", type=Path, help="write recall vs queries/s to this PNG")


def run(args: argparse.Namespace) -> int:
    bench(args)
    return 0


@dataclass(frozen=True)
class Setup:
    """What the figures were measured on, beside them in the report and the JSON."""

    source: str
    rows: int
    dims: int
    queries: int
    k: int
    distance: str
    repeats: int
    explain_sample: int
    sizes: DataSizes
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float]

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "rows": self.rows, "dims": self.dims,
            "queries": self.queries, "k": self.k, "distance": self.distance,
            "repeats": self.repeats, "explain_sample": self.explain_sample,
            "shared_buffers_bytes": self.sizes.shared_buffers_bytes,
            "table_bytes": self.sizes.table_bytes, "index_bytes": self.sizes.index_bytes,
            "data_fits_shared_buffers": self.sizes.fits,
            "load_average_start": list(self.load_average_start),
            "load_average_end": list(self.load_average_end),
        }


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
              f"{len(dataset.queries)} queries, k={args.k}, {args.distance.value} distance; "
              f"median of {args.repeats} repeats", flush=True)
        load_start = os.getloadavg()
        results, sizes = _measure(args, dataset, connect())
    finally:
        if engine is not None:
            engine.dispose()
    setup = Setup(dataset.source, len(dataset.vectors), dataset.dims, len(dataset.queries),
                  args.k, args.distance.value, args.repeats, EXPLAIN_SAMPLE, sizes,
                  load_start, os.getloadavg())
    print(report.table(results))
    print(f"server ms: median EXPLAIN ANALYZE execution time over {EXPLAIN_SAMPLE} queries; "
          f"{sizes.describe()}; load average {_load(setup.load_average_start)} at the start, "
          f"{_load(setup.load_average_end)} at the end")
    print(report.ceilings(results))
    print(report.ratios(results))
    if args.json is not None:
        document = {"setup": setup.as_json(), "results": [r.as_json() for r in results]}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    if args.plot is not None:
        from mrl_pg.tools.measure.plot import bench_plot

        title = (f"{len(dataset.vectors)} x {dataset.dims}, {dataset.source}, "
                 f"median of {args.repeats} repeats")
        bench_plot(results, args.plot, title)
    return results


def _check(args: argparse.Namespace, dataset: Dataset) -> None:
    dataset.check_k(args.k)
    if args.k < 1:
        raise SearchParameterError(f"k must be positive, got {args.k}")
    if args.repeats < 1:
        raise SearchParameterError(f"--repeats must be at least 1, got {args.repeats}")
    for count in args.candidates:
        if count < args.k:
            raise SearchParameterError(f"candidates ({count}) must be at least k ({args.k})")


@dataclass(frozen=True)
class Measured:
    """One method at one setting: how to run it and what to report it as."""

    label: str
    searcher: methods.Searcher
    fields: dict[str, Any]


def _measure(
    args: argparse.Namespace, dataset: Dataset, engine: Engine
) -> tuple[list[Result], DataSizes]:
    create_vector_extension(engine)
    truth = exact_neighbors(dataset.vectors, dataset.queries, args.k, args.distance)
    prefixes = [(dims, storage) for storage in args.storage for dims in args.prefix]
    scratch = ScratchTable(engine, dataset, prefixes, args.distance,
                           HNSWParameters(args.m, args.ef_construction))
    scratch.create()
    try:
        full = _build_full_index(scratch)
        built = {}
        for dims, storage in prefixes:
            index = scratch.build(scratch.prefix_index(scratch.prefix(dims, storage)))
            print(f"  prefix index {dims} {storage.value}: {index.size_bytes / 1e6:.1f} MB "
                  f"in {index.build_s:.1f} s", flush=True)
            built[dims, storage] = index
        sizes = scratch.sizes()
        print(f"  {sizes.describe()}", flush=True)
        with ExitStack() as stack:
            exact_conn = stack.enter_context(
                methods.psycopg_connection(engine, methods.EXACT_SESSION)
            )
            raw = stack.enter_context(methods.psycopg_connection(engine))
            conn = stack.enter_context(methods.autocommit_connection(engine))
            runs = [Measured("exact", methods.exact(exact_conn, scratch, args.k),
                             {"method": "exact"})]
            if full is not None:
                runs += [
                    Measured(f"full_hnsw ef_search={ef}",
                             methods.full_hnsw(raw, scratch, args.k, ef),
                             dict(method="full_hnsw", storage=scratch.full_type_name,
                                  ef_search=ef, index_bytes=full.size_bytes,
                                  build_s=full.build_s))
                    for ef in args.ef_search
                ]
            for (dims, storage), index in built.items():
                prefix = scratch.prefix(dims, storage)
                for count in args.candidates:
                    common = dict(prefix_dims=dims, storage=storage.value, candidates=count,
                                  ef_search=methods.ef_search_of(methods.prefix_settings(count)),
                                  index_bytes=index.size_bytes, build_s=index.build_s)
                    setting = f"{dims} {storage.value} c={count}"
                    runs.append(Measured(f"handwritten {setting}",
                                         methods.handwritten(raw, scratch, prefix, args.k, count),
                                         dict(method="handwritten", **common)))
                    runs.append(Measured(f"mrl_search {setting}",
                                         methods.library(conn, scratch, prefix, args.k, count),
                                         dict(method="mrl_search", **common)))
            timings = _interleaved(runs, dataset, args.repeats)
            server_ms = _server_times(runs, dataset.queries[:EXPLAIN_SAMPLE])
            results = [
                summarise(timings[measured.label], truth, k=args.k,
                          server_ms=server_ms[measured.label], **measured.fields)
                for measured in runs
            ]
    finally:
        scratch.drop()
    return results, sizes


def _build_full_index(scratch: ScratchTable) -> BuiltIndex | None:
    """The HNSW index on the full vectors, or None (said) where pgvector cannot index them."""
    limit = Storage.HALFVEC.index_limit if scratch.dataset.half else Storage.VECTOR.index_limit
    if scratch.dataset.dims > limit:
        print(f"  full_hnsw skipped: pgvector cannot index {scratch.dataset.dims} dims "
              f"of {scratch.full_type_name} (limit {limit})")
        return None
    built = scratch.build(scratch.full_index())
    print(f"  full index: {built.size_bytes / 1e6:.1f} MB in {built.build_s:.1f} s", flush=True)
    return built


def _interleaved(
    runs: list[Measured], dataset: Dataset, repeats: int
) -> dict[str, list[Timing]]:
    """Every run over every query, ``repeats`` times, the runs taking turns."""
    timings: dict[str, list[Timing]] = {measured.label: [] for measured in runs}
    for repeat in range(1, repeats + 1):
        for measured in _taking_turns(runs, repeat):
            label = f"{measured.label} (repeat {repeat}/{repeats})"
            timing = time_queries(measured.searcher.search, dataset.queries, label)
            timings[measured.label].append(timing)
            qps = len(timing.found) / timing.seconds
            print(f"  {label}: {qps:.0f} q/s", flush=True)
    return timings


def _server_times(runs: list[Measured], sample: Matrix) -> dict[str, float]:
    """Each run's median server-side execution time over ``sample``, the runs taking turns
    query by query."""
    times: dict[str, list[float]] = {measured.label: [] for measured in runs}
    for turn, query in enumerate(sample, start=1):
        for measured in _taking_turns(runs, turn):
            times[measured.label].append(measured.searcher.execution_ms(query))
    return {label: statistics.median(values) for label, values in times.items()}


def _taking_turns(runs: list[Measured], turn: int) -> list[Measured]:
    """``runs`` in order on odd turns, reversed on even ones: a run that follows another on
    the same data finds the pages that one read in the buffer cache, so no run may always
    come right after the same one (``mrl_search`` after ``handwritten`` of the same
    setting)."""
    return runs if turn % 2 else runs[::-1]


def _load(average: tuple[float, float, float]) -> str:
    return " ".join(f"{value:.2f}" for value in average)
