"""Where the time of one search goes: ``mrl_search`` against hand-written SQL, one client.

    python benchmarks/search_overhead.py [--rows 50000 --dims 384 --prefix 128]
        [--queries 300 --repeats 7] [--compare ../old-checkout/.venv/bin/python:old]
        [--json out.json]

Loads MRL-like vectors (``mrl_pg.synthetic``) into a schema of its own, builds the prefix's
HNSW index, then times every method on the same queries, warm, one client, one connection each
with the same settings (``search_path`` only):

- ``hand_inline``: hand-written two-stage SQL through psycopg, autocommit, one statement that
  makes ``hnsw.ef_search`` with ``set_config(..., true)`` in a subquery gating the index scan
  (the mechanism the library uses), query prefix computed on the client, LIMITs as literals;
- ``hand_set_local``: the same SQL without the settings subquery, as users often write it:
  ``BEGIN; SET LOCAL hnsw.ef_search = ...; SELECT ...; COMMIT`` (four round trips);
- ``compiled``: the SQL ``mrl_search`` compiles to, run on psycopg directly with the same
  bound values (the query vector bound as the library binds it); a version that makes its
  settings in a statement of their own runs that statement first, as it did;
- ``sqlalchemy_text``: ``hand_inline``'s SQL as a ``text()`` on a SQLAlchemy Core connection
  in autocommit mode (its own), the least SQLAlchemy adds to any statement it runs;
- ``core_autocommit``: ``conn.execute(mrl_search(select(t.c.id), q, ...)).all()`` on a
  SQLAlchemy Core connection in autocommit mode (which runs it directly on the psycopg
  cursor, see ``mrl_pg/search/direct.py``);
- ``core_listened``: the same on an engine with one (empty) ``before_cursor_execute``
  listener, as an instrumented engine has: the search then runs through SQLAlchemy's own
  execution;
- ``core_commit``: the same on a connection in a transaction, ``conn.commit()`` per query;
- ``orm_session``: ``session.execute(Item.mrl_search(q, ...)).all()`` in a ``Session`` per
  query, committed.

Each repeat runs ``--queries`` searches per method, the methods interleaved (repeat 1: every
method, repeat 2: every method, ...) so that noise from other work on the machine hits them
alike; the median of the repeats is reported, with its ratio to ``hand_inline``, and the client
process's CPU time per search (which load from other work disturbs less). Server times
come from ``EXPLAIN (ANALYZE)`` on a sample of the queries; the Python-side split of
``core_autocommit`` (building the statement, executing it, fetching the rows) from
``time.perf_counter`` around each part.

``--compare PYTHON[:LABEL]`` runs the same methods in another interpreter (say the virtualenv
of an older checkout, whose ``mrl_pg`` it imports), interleaved with this one's, on the same
server and data. The database is ``--dsn`` (or ``MRL_PG_DSN``), else the embedded server; the
schema is dropped at the end unless ``--keep`` (a kept schema holding the right rows is reused).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import BigInteger, Engine, MetaData, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix, mrl_search
from mrl_pg.load import copy_vectors
from mrl_pg.server import database_url, sqlalchemy_url
from mrl_pg.synthetic import mrl_like_vectors, queries_near

try:
    from mrl_pg.search.defaults import default_ef_search
except ImportError:  # a checkout compared with --compare from before the rule was a function

    def default_ef_search(first_stage_candidates: int) -> int:
        return min(max(first_stage_candidates, 40), 1000)

METHODS = (
    "hand_inline",
    "hand_set_local",
    "compiled",
    "sqlalchemy_text",
    "core_autocommit",
    "core_listened",
    "core_commit",
    "orm_session",
)
BASELINE = "hand_inline"
TABLE = "overhead_items"
WARMUP = 50
EXPLAIN_SAMPLE = 25


def model(dims: int, prefix: int) -> Any:
    """A declarative model of the benchmark table (declared at run time: dims vary)."""

    class Base(DeclarativeBase):
        metadata = MetaData()

    class Item(MRLSearchMixin, Base):
        __tablename__ = TABLE

        id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
        embedding = mapped_column(VECTOR(dims), deferred=True)
        embedding_prefix = mrl_prefix(embedding, prefix)

    return Item


@contextmanager
def benchmark_schema(url: str, name: str, keep: bool) -> Iterator[None]:
    """Creates schema ``name`` (with the vector extension in ``public``) unless it exists."""
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{name}"'))
    try:
        yield
    finally:
        if not keep:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def load(engine: Engine, item: Any, vectors: npt.NDArray[np.float32]) -> None:
    """Loads ``vectors`` unless the table already holds that many rows; builds the index."""
    table = item.__table__
    with engine.begin() as conn:
        exists = conn.scalar(text(f"SELECT to_regclass('{TABLE}') IS NOT NULL"))
        if exists and conn.scalar(text(f"SELECT count(*) FROM {TABLE}")) == len(vectors):
            return
        table.drop(conn, checkfirst=True)
        table.create(conn)
        indexes = list(table.indexes)
        for index in indexes:
            index.drop(conn)
        copy_vectors(conn, table, "embedding", vectors, {"id": range(len(vectors))})
        for index in indexes:
            index.create(conn)
        conn.execute(text(f"ANALYZE {TABLE}"))


class Bench:
    """One interpreter's methods over one set of connections."""

    def __init__(self, url: str, schema: str, config: dict[str, Any]) -> None:
        self.k: int = config["k"]
        self.candidates: int = config["candidates"]
        self.prefix: int = config["prefix"]
        self.ef_search = default_ef_search(self.candidates)  # what mrl_search sets
        self.queries = np.load(config["queries"])
        self.item = model(config["dims"], self.prefix)
        self.table = self.item.__table__
        options = f"-c search_path={schema},public"
        self.ac_engine = create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"options": options}
        )
        self.tx_engine = create_engine(url, connect_args={"options": options})
        self.core_ac = self.ac_engine.connect()
        self.listened_engine = create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"options": options}
        )
        event.listen(self.listened_engine, "before_cursor_execute", _ignore)
        self.core_listened_conn = self.listened_engine.connect()
        self.text_ac = self.ac_engine.connect()
        register_vector(self.text_ac.connection.dbapi_connection)
        self.core_tx = self.tx_engine.connect()
        conninfo = make_url(url).set(drivername="postgresql").render_as_string(False)
        self.raw_ac = psycopg.connect(conninfo, autocommit=True, options=options)
        self.raw_tx = psycopg.connect(conninfo, autocommit=True, options=options)
        for conn in (self.raw_ac, self.raw_tx):
            register_vector(conn)
        two_stage = (
            "SELECT c.id, c.embedding <=> %(q)s AS distance FROM ({settings}"
            f"SELECT id, embedding FROM {TABLE} {{gate}}ORDER BY embedding_prefix <=> %(p)s "
            f"LIMIT {self.candidates}) AS c ORDER BY distance LIMIT {self.k}"
        )
        self.inline_sql = two_stage.format(
            settings=(
                f"SELECT set_config('hnsw.ef_search', '{self.ef_search}', true)) AS s (applied)"
                " CROSS JOIN LATERAL ("
            ),
            gate="WHERE s.applied IS NOT NULL ",
        )
        self.plain_sql = two_stage.format(settings="", gate="")
        self.inline_text = text(self.inline_sql.replace("%(q)s", ":q").replace("%(p)s", ":p"))
        self.compiled_sql, self.compiled_params, self.bind_query, self.settings_sql = (
            self._compile()
        )

    def _statement(self, query: npt.NDArray[np.float32]) -> Any:
        return mrl_search(
            select(self.table.c.id), query, self.k, candidates=self.candidates
        )

    def _compile(self) -> tuple[str, dict[str, Any], Callable[[Any], Any], str | None]:
        """The SQL text and bound values of the library's statement, as psycopg gets them,
        and (for a version that makes settings in a statement of their own) that statement."""
        statement = self._statement(self.queries[0])
        self.core_ac.execute(statement).all()  # prepares the DBAPI connection (binary dumper)
        compiled = statement.compile(dialect=self.ac_engine.dialect)
        processors = compiled._bind_processors
        params = {}
        for key, value in compiled.construct_params().items():
            processor = processors.get(key)
            params[key] = processor(value) if processor else value
        query_key = "mrl_query"
        process_query = processors.get(query_key, lambda value: value)
        settings = statement.get_execution_options().get("mrl_pg_settings")
        settings_sql = None
        if settings and "set_config" not in str(compiled):
            settings_sql = "SELECT " + ", ".join(
                f"current_setting('{name}', true), set_config('{name}', '{value}', false)"
                for name, value in settings
            )
        return str(compiled), params, process_query, settings_sql

    # One query per method ------------------------------------------------------------------

    def hand_inline(self, query: npt.NDArray[np.float32]) -> list[Any]:
        return self.raw_ac.execute(
            self.inline_sql, {"q": query, "p": HalfVector(query[: self.prefix])}
        ).fetchall()

    def hand_set_local(self, query: npt.NDArray[np.float32]) -> list[Any]:
        conn = self.raw_tx
        with conn.transaction():
            conn.execute(f"SET LOCAL hnsw.ef_search = {self.ef_search}")
            return conn.execute(
                self.plain_sql, {"q": query, "p": HalfVector(query[: self.prefix])}
            ).fetchall()

    def compiled(self, query: npt.NDArray[np.float32]) -> list[Any]:
        dbapi: Any = self.core_ac.connection.dbapi_connection
        if self.settings_sql is not None:
            dbapi.execute(self.settings_sql)
        params = dict(self.compiled_params)
        params["mrl_query"] = self.bind_query(query)
        return list(dbapi.execute(self.compiled_sql, params).fetchall())

    def sqlalchemy_text(self, query: npt.NDArray[np.float32]) -> list[Any]:
        values = {"q": query, "p": HalfVector(query[: self.prefix])}
        return list(self.text_ac.execute(self.inline_text, values).all())

    def core_autocommit(self, query: npt.NDArray[np.float32]) -> list[Any]:
        return list(self.core_ac.execute(self._statement(query)).all())

    def core_listened(self, query: npt.NDArray[np.float32]) -> list[Any]:
        return list(self.core_listened_conn.execute(self._statement(query)).all())

    def core_commit(self, query: npt.NDArray[np.float32]) -> list[Any]:
        rows = list(self.core_tx.execute(self._statement(query)).all())
        self.core_tx.commit()
        return rows

    def orm_session(self, query: npt.NDArray[np.float32]) -> list[Any]:
        with Session(self.tx_engine) as session, session.begin():
            statement = self.item.mrl_search(query, self.k, candidates=self.candidates)
            return [(item.id, distance) for item, distance in session.execute(statement)]

    # Measurements --------------------------------------------------------------------------

    def run(self, method: str, start: int, count: int) -> tuple[float, float]:
        """Seconds for ``count`` searches by ``method`` from query ``start`` on: elapsed, and
        this process's CPU time (the client's own work, which other load on the machine
        disturbs less than it does elapsed time)."""
        search = getattr(self, method)
        n = len(self.queries)
        began, cpu = time.perf_counter(), time.process_time()
        for i in range(start, start + count):
            search(self.queries[i % n])
        return time.perf_counter() - began, time.process_time() - cpu

    def check(self) -> dict[str, list[int]]:
        """The ids every method returns for the first query (they must agree)."""
        return {m: [row[0] for row in getattr(self, m)(self.queries[0])] for m in METHODS}

    def explain(self) -> dict[str, dict[str, float]]:
        """Median planning and execution ms of each method's search statement."""
        plans: dict[str, dict[str, float]] = {}
        sample = self.queries[:EXPLAIN_SAMPLE]
        for method, sql in (
            ("hand_inline", self.inline_sql),
            ("hand_set_local", self.plain_sql),
            ("compiled", self.compiled_sql),
        ):
            planning, execution = [], []
            for query in sample:
                if method == "compiled":
                    params = dict(self.compiled_params)
                    params["mrl_query"] = self.bind_query(query)
                    conn: Any = self.core_ac.connection.dbapi_connection
                else:
                    params = {"q": query, "p": HalfVector(query[: self.prefix])}
                    conn = self.raw_ac
                with conn.transaction():
                    if method != "hand_inline":
                        conn.execute(f"SET LOCAL hnsw.ef_search = {self.ef_search}")
                    row = conn.execute(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params, prepare=False
                    ).fetchone()
                report = row[0][0]
                planning.append(report["Planning Time"])
                execution.append(report["Execution Time"])
            plans[method] = {
                "planning_ms": statistics.median(planning),
                "execution_ms": statistics.median(execution),
            }
        return plans

    def split(self, count: int) -> dict[str, float]:
        """Median µs per query of ``core_autocommit``'s parts."""
        parts: dict[str, list[float]] = {"build": [], "execute": [], "fetch": []}
        n = len(self.queries)
        for i in range(count):
            query = self.queries[i % n]
            t0 = time.perf_counter()
            statement = self._statement(query)
            t1 = time.perf_counter()
            result = self.core_ac.execute(statement)
            t2 = time.perf_counter()
            result.all()
            t3 = time.perf_counter()
            parts["build"].append(t1 - t0)
            parts["execute"].append(t2 - t1)
            parts["fetch"].append(t3 - t2)
        return {name: statistics.median(v) * 1e6 for name, v in parts.items()}

    def profile(self, count: int) -> str:
        """cProfile of ``count`` ``core_autocommit`` searches, top functions by own time."""
        import cProfile
        import io
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        self.run("core_autocommit", 0, count)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(30)
        return out.getvalue()

    def close(self) -> None:
        for conn in (self.core_ac, self.text_ac, self.core_tx, self.core_listened_conn):
            conn.close()
        for raw in (self.raw_ac, self.raw_tx):
            raw.close()
        self.ac_engine.dispose()
        self.tx_engine.dispose()
        self.listened_engine.dispose()


def _ignore(*args: Any) -> None:
    """A listener that does nothing: its presence alone changes how searches run."""


def serve(url: str, schema: str, config: dict[str, Any]) -> None:
    """Worker mode: one JSON request per stdin line, one JSON answer per stdout line."""
    bench = Bench(url, schema, config)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the answer stream
    for line in sys.stdin:
        request = json.loads(line)
        answer = getattr(bench, request.pop("call"))(**request)
        out.write(json.dumps(answer) + "\n")
        out.flush()
    bench.close()


class Worker:
    """A :class:`Bench` in another interpreter, driven through :func:`serve`."""

    def __init__(self, python: str, url: str, schema: str, config: dict[str, Any]) -> None:
        self.python = python
        self.process = subprocess.Popen(
            [python, __file__, "--serve", url, schema, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def __getattr__(self, call: str) -> Callable[..., Any]:
        def remote(**kwargs: Any) -> Any:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(json.dumps({"call": call, **kwargs}) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError(f"the worker in {self.python} stopped")
            return json.loads(line)

        return remote

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    url = sqlalchemy_url(args.dsn) if args.dsn else database_url()
    schema = f"overhead_{args.rows}_{args.dims}_{args.prefix}"
    vectors = mrl_like_vectors(args.rows, args.dims, seed=0)
    queries = queries_near(vectors, args.queries, seed=1).astype(np.float32)
    workdir = Path(tempfile.mkdtemp(prefix="mrl_overhead_"))
    np.save(workdir / "queries.npy", queries)
    config = {
        "k": args.k,
        "candidates": args.candidates,
        "prefix": args.prefix,
        "dims": args.dims,
        "queries": str(workdir / "queries.npy"),
    }
    with benchmark_schema(url, schema, args.keep):
        options = f"-c search_path={schema},public"
        loader = create_engine(url, connect_args={"options": options})
        started = time.perf_counter()
        load(loader, model(args.dims, args.prefix), vectors.astype(np.float32))
        loader.dispose()
        print(f"data ready in {time.perf_counter() - started:.1f} s: {args.rows:,} x "
              f"{args.dims}, halfvec prefix {args.prefix}, k={args.k}, "
              f"{args.candidates} candidates", flush=True)
        del vectors
        sides: dict[str, Any] = {args.label: Bench(url, schema, config)}
        for spec in args.compare:
            python, _, label = spec.partition(":")
            sides[label or python] = Worker(python, url, schema, config)
        try:
            return run_sides(sides, args)
        finally:
            for side in sides.values():
                side.close()


def run_sides(sides: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    for label, side in sides.items():
        found = side.check()
        if len({json.dumps(ids) for ids in found.values()}) != 1:
            print(f"warning: {label}: methods disagree on the first query: {found}")
        for method in METHODS:
            side.run(method=method, start=0, count=WARMUP)
    times: dict[str, dict[str, list[float]]] = {
        label: {m: [] for m in METHODS} for label in sides
    }
    cpu: dict[str, dict[str, list[float]]] = {label: {m: [] for m in METHODS} for label in sides}
    for repeat in range(args.repeats):
        for method in METHODS:
            for label, side in sides.items():
                seconds, cpu_seconds = side.run(
                    method=method, start=repeat * args.queries, count=args.queries
                )
                times[label][method].append(seconds / args.queries * 1e3)
                cpu[label][method].append(cpu_seconds / args.queries * 1e6)
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    results: dict[str, Any] = {"config": vars(args), "sides": {}}
    for label, side in sides.items():
        per_method = {m: statistics.median(v) for m, v in times[label].items()}
        base = per_method[BASELINE]
        results["sides"][label] = {
            "ms_per_query": per_method,
            "repeats_ms": times[label],
            "qps": {m: 1e3 / v for m, v in per_method.items()},
            "ratio_to_hand_inline": {m: base / v for m, v in per_method.items()},
            "client_cpu_us": {m: statistics.median(v) for m, v in cpu[label].items()},
            "server": side.explain(),
            "core_autocommit_us": side.split(count=args.queries),
        }
        if args.profile:
            print(f"--- cProfile of core_autocommit ({label}) ---")
            print(side.profile(count=args.queries))
    return results


def report(results: dict[str, Any]) -> None:
    for label, side in results["sides"].items():
        print(f"\n{label}: median of {results['config']['repeats']} repeats x "
              f"{results['config']['queries']} queries")
        print(f"| method | ms/query | q/s | q/s ratio to {BASELINE} | client CPU µs/query |")
        print("|---|---|---|---|---|")
        for method in METHODS:
            print(f"| {method} | {side['ms_per_query'][method]:.3f} | {side['qps'][method]:.0f}"
                  f" | {side['ratio_to_hand_inline'][method]:.2f}"
                  f" | {side['client_cpu_us'][method]:.0f} |")
        print("server (EXPLAIN ANALYZE, median ms): " + "; ".join(
            f"{m}: plan {v['planning_ms']:.3f} exec {v['execution_ms']:.3f}"
            for m, v in side["server"].items()
        ))
        split = side["core_autocommit_us"]
        print("core_autocommit, median µs: " + ", ".join(f"{k} {v:.0f}" for k, v in split.items()))


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=os.environ.get("MRL_PG_DSN"))
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--prefix", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--queries", type=int, default=300, help="searches per method per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--label", default="current")
    parser.add_argument("--compare", action="append", default=[], metavar="PYTHON[:LABEL]")
    parser.add_argument("--keep", action="store_true", help="keep the schema and its data")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of (c)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    results = measure(args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
