"""What the recall monitor costs: on the search path, and in exact-query load on the database.

    python benchmarks/monitor_overhead.py [--rows 50000 --dims 384 --prefix 128]
        [--queries 300 --repeats 7 --checks 50] [--qps 10,100,1000] [--json out.json]

Loads MRL-like vectors (``mrl_pg.synthetic``) into a schema of its own, builds the prefix's
HNSW index, then measures, one client, warm:

1. Per search, ``conn.execute(mrl_search(...)).all()`` on a Core connection in autocommit
   mode, the methods interleaved per repeat (median of the repeats): with no monitor, with a
   monitor attached at sample rate 0, and at sample rate 0.01 (checks running beside, on the
   monitor's own connections, as they would in production).
2. The monitor's own code on the search path, timed alone (median over 100,000 calls): the
   look-up and draw of an unsampled search, and the copy and queueing of a sampled one.
3. One check, step by step (median over ``--checks`` searches): building its two statements
   (Python, in the worker thread), the approximate re-run, and the exact search (index scans
   off, every row the filters keep read and compared): the exact-query load. From it, the
   database time that sampling 1% of the searches costs at each ``--qps`` rate.

The database is ``--dsn`` (or ``MRL_PG_DSN``), else the embedded server; the schema is dropped
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    MetaData,
    Table,
    create_engine,
    func,
    select,
    text,
)

from mrl_pg import add_prefix_column, copy_vectors, mrl_search
from mrl_pg.monitor import RecallMonitor
from mrl_pg.monitor.check import SampledSearch, check_statements
from mrl_pg.search.query_vector import prepare_connection
from mrl_pg.search.search_select import SEARCH_OBSERVERS
from mrl_pg.synthetic import mrl_like_vectors, queries_near
from mrl_pg.tools.server import database_url, scratch_schema, sqlalchemy_url


def build_table(engine: Engine, rows: int, dims: int, prefix: int) -> Table:
    table = Table("monitored", MetaData(), Column("id", BigInteger, primary_key=True),
                  Column("embedding", VECTOR(dims)))
    add_prefix_column(table, "embedding", prefix)
    vectors = mrl_like_vectors(rows, dims, seed=0)
    with engine.begin() as conn:
        table.create(conn)
        for index in table.indexes:
            index.drop(conn)
        copy_vectors(conn, table, "embedding", vectors, {"id": range(rows)})
        for index in table.indexes:
            index.create(conn)
        conn.execute(text("ANALYZE monitored"))
    return table


def per_search_us(engine: Engine, table: Table, queries: Any, args: argparse.Namespace) -> dict[
        str, float]:
    """Median microseconds per search of each monitor set-up, interleaved per repeat."""
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    times: dict[str, list[float]] = {"no monitor": [], "rate 0": [], "rate 0.01": []}
    with autocommit.connect() as conn:
        def searches() -> float:
            start = time.perf_counter()
            for query in queries:
                conn.execute(mrl_search(select(table.c.id), query, args.k)).all()
            return (time.perf_counter() - start) / len(queries) * 1e6

        searches()  # warm-up
        for _ in range(args.repeats):
            times["no monitor"].append(searches())
            for rate in (0.0, 0.01):
                monitor = RecallMonitor.attach(engine, rate, seed=1, metrics=False)
                try:
                    times[f"rate {rate:g}"].append(searches())
                finally:
                    monitor.close(drain=False)
    return {name: statistics.median(values) for name, values in times.items()}


def observer_us(engine: Engine, table: Table, query: Any) -> dict[str, float]:
    """Median microseconds of the monitor's own code per search, unsampled and sampled.

    The checks run on an engine whose one connection is held meanwhile, so that only the
    searching thread's side is timed (the queue fills and further samples are dropped, as
    under overload; sampling and copying happen all the same). Closing with ``timeout=0``
    logs that a check is still running: the one waiting for that connection, which runs
    once the connection is given back."""
    search = mrl_search(select(table.c.id), query, 10)
    with engine.connect() as conn:
        schema = conn.execute(select(func.current_schema())).scalar_one()
    stalled = create_engine(engine.url, pool_size=1, max_overflow=0,
                            connect_args={"options": f"-c search_path={schema},public"})
    results, monitors = {}, []
    with engine.connect() as conn, stalled.connect():
        for name, rate in (("unsampled (look-up + draw)", 0.0), ("sampled (copy + queue)", 1.0)):
            monitor = RecallMonitor.attach(engine, rate, max_pending=1, max_concurrent=1,
                                           metrics=False, replica=stalled)
            observe = SEARCH_OBSERVERS[engine.dialect]
            calls = 100_000 if rate == 0 else 20_000
            samples = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(calls):
                    observe(search, conn, [], {})
                samples.append((time.perf_counter() - start) / calls * 1e6)
            monitor.close(drain=False, timeout=0)
            monitors.append(monitor)
            results[name] = statistics.median(samples)
    for monitor in monitors:
        monitor.wait_idle(timeout=60)
    stalled.dispose()
    return results


def check_ms(engine: Engine, table: Table, queries: Any, checks: int) -> dict[str, float]:
    """Median milliseconds of each step of a check."""
    steps: dict[str, list[float]] = {"build statements": [], "approximate re-run": [],
                                     "exact search": []}
    with engine.connect() as conn:
        prepare_connection(conn)
        for query in queries[:checks]:
            search = mrl_search(select(table.c.id), query, 10)
            assert search.search_request is not None
            sample = SampledSearch(search.search_request, query, {}, None, None,
                                   datetime.now(timezone.utc))
            start = time.perf_counter()
            statements = check_statements(sample, None)
            assert statements is not None
            built = time.perf_counter()
            with conn.begin():
                conn.execute(statements.approximate).all()
                approximate = time.perf_counter()
                conn.execute(select(func.set_config("enable_indexscan", "off", True)))
                exact_start = time.perf_counter()
                conn.execute(statements.exact).all()
                done = time.perf_counter()
            steps["build statements"].append((built - start) * 1e3)
            steps["approximate re-run"].append((approximate - built) * 1e3)
            steps["exact search"].append((done - exact_start) * 1e3)
    return {name: statistics.median(values) for name, values in steps.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("MRL_PG_DSN"))
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--prefix", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--queries", type=int, default=300, help="searches per set-up per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--checks", type=int, default=50, help="checks timed step by step")
    parser.add_argument("--qps", default="10,100,1000", help="search rates to cost 1%% at")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    url = sqlalchemy_url(args.dsn) if args.dsn else database_url()
    queries = queries_near(mrl_like_vectors(args.rows, args.dims, seed=0), args.queries, seed=1)
    with scratch_schema(url, "mrl_pg_monitor_bench") as engine:
        table = build_table(engine, args.rows, args.dims, args.prefix)
        search = per_search_us(engine, table, queries, args)
        observer = observer_us(engine, table, queries[0])
        check = check_ms(engine, table, queries, args.checks)
    database_ms = check["approximate re-run"] + check["exact search"]
    load = {
        int(qps): {"checks_per_s": qps / 100, "db_ms_per_s": qps / 100 * database_ms,
                   "worker_python_ms_per_s": qps / 100 * check["build statements"]}
        for qps in map(float, args.qps.split(","))
    }
    print(f"{args.rows} rows x {args.dims} dims, prefix {args.prefix}, k={args.k}")
    print("per search (µs, median of repeats):")
    for name, value in search.items():
        extra = value - search["no monitor"]
        print(f"  {name:<28} {value:8.1f}   {extra:+6.1f} vs no monitor")
    print("the monitor's own code in the searching thread (µs per search):")
    for name, value in observer.items():
        print(f"  {name:<28} {value:8.2f}")
    print("one check (ms, median):")
    for name, value in check.items():
        print(f"  {name:<28} {value:8.2f}")
    print("load of the checks when 1% of searches are sampled (the statements' time, mostly "
          "database work; the build is Python in the worker thread):")
    for qps, cost in load.items():
        print(f"  at {qps:>6} searches/s: {cost['checks_per_s']:6.2f} checks/s, "
              f"{cost['db_ms_per_s']:8.1f} ms of statements per second "
              f"({cost['db_ms_per_s'] / 10:.2f}% of one core), "
              f"{cost['worker_python_ms_per_s']:6.1f} ms of Python")
    if args.json is not None:
        args.json.write_text(json.dumps(
            {"rows": args.rows, "dims": args.dims, "prefix": args.prefix, "per_search_us": search,
             "observer_us": observer, "check_ms": check, "load_per_1pct": load}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
