"""Run mrl_pg end to end on a demo table: add a prefix, search, compare with full HNSW.

Uses ``MRL_PG_DSN`` when set, else starts the embedded PostgreSQL server. The schema comes from
the demo app's Alembic migrations (the repository's ``migrations/``, shipped in the package as
``mrl_pg.demo_migrations``): the app table, then ``op.add_mrl_prefix`` (256 dims), then
``op.resize_mrl_prefix`` (down to 128). Then it compares ``mrl_search`` with a full-dimension
HNSW index at matched recall: it measures the full index's recall at the connection's
``hnsw.ef_search`` (pgvector's default unless the server sets another), gives ``mrl_search``
the fewest candidates from :data:`CANDIDATE_LADDER` that reach that recall (or, said plainly,
the count that came closest), and times both, taking turns, over :data:`REPEATS` repeats of
the queries on one autocommit connection (one round trip per search either way). It prints the
median time per query, the queries/s ratio, and the index-size and build-time ratios.

On a database of yours the demo leaves everything as it found it: it refuses to start if its
table or its Alembic version table (``mrl_pg_demo_version``, not your ``alembic_version``)
exists, and afterwards drops what it made, the ``vector`` extension too if it created it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt
from alembic import command
from alembic.config import Config
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    Table,
    create_engine,
    inspect,
    select,
    text,
)

from mrl_pg.errors import DemoConflictError
from mrl_pg.load import copy_vectors
from mrl_pg.prefix.declare import add_prefix_column
from mrl_pg.search.statement import mrl_search
from mrl_pg.sqltext import TableRef
from mrl_pg.tools.server import create_vector_extension, database_url
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k

TABLE = "mrl_pg_demo_items"
DIMS = 768
PREFIX_DIMS = 128
#: The demo app's Alembic project: app table, then a 256-dim prefix, then shrunk to 128.
MIGRATIONS_PACKAGE = "mrl_pg.demo_migrations"
#: The demo's own Alembic version table (``version_table`` in its ``env.py``).
VERSION_TABLE = "mrl_pg_demo_version"
PREFIX_INDEX = "ix_mrl_pg_demo_items_embedding_mrl_hnsw"
FULL_INDEX = "demo_full_hnsw"
K = 10
#: The candidate counts tried, smallest first, to match the full index's recall.
CANDIDATE_LADDER = (40, 80, 160, 320)
#: Timed runs over the queries of each search, the two taking turns; medians are printed.
REPEATS = 3


@contextmanager
def alembic_config(url: str) -> Iterator[Config]:
    """The Alembic ``Config`` of the demo app's migrations on ``url``, wherever the package is
    installed (a checkout, an editable install or a wheel)."""
    with resources.as_file(resources.files(MIGRATIONS_PACKAGE)) as folder:
        config = Config(str(folder / "alembic.ini"))
        location = str(folder).replace("%", "%%")  # the ini file's interpolation syntax
        config.set_main_option("script_location", location)
        config.set_main_option("prepend_sys_path", location)  # env.py imports demo_app
        config.attributes["url"] = url
        yield config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="rows in the demo table")
    parser.add_argument("--queries", type=int, default=100, help="queries to time")


def run(args: argparse.Namespace) -> int:
    url = database_url()
    engine = create_engine(url)
    try:
        _refuse_to_touch_existing_tables(engine)
        print(f"database: {engine.url.render_as_string(hide_password=True)}")
        with _vector_extension(engine), alembic_config(url) as config:
            _run_migrations_and_searches(engine, config, args)
    finally:
        engine.dispose()
    return 0


def _run_migrations_and_searches(engine: Engine, config: Config, args: argparse.Namespace) -> None:
    items = Table(
        TABLE,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("embedding", VECTOR(DIMS)),
    )
    vectors = mrl_like_vectors(args.rows, DIMS)
    queries = queries_near(vectors, args.queries)
    try:
        _create_app_table(engine, config, items, vectors)
        _migrate(engine, config, "0002", "added a 256-dim halfvec prefix and its HNSW index")
        prefix_s = _migrate(engine, config, "head", f"shrank the prefix to {PREFIX_DIMS} dims")
        add_prefix_column(items, "embedding", PREFIX_DIMS, name="embedding_mrl")
        _report(engine, items, vectors, queries, prefix_s)
    finally:
        command.downgrade(config, "base")
        with engine.begin() as conn:
            Table(VERSION_TABLE, MetaData()).drop(conn, checkfirst=True)


def _refuse_to_touch_existing_tables(engine: Engine) -> None:
    tables = inspect(engine)
    for table in (TABLE, VERSION_TABLE):
        if tables.has_table(table):
            raise DemoConflictError(
                f"the database already has a table {table!r} (left by an earlier demo or "
                "`alembic -c migrations/alembic.ini upgrade`): the demo leaves it alone; "
                "drop it, or set MRL_PG_DSN to another database"
            )


@contextmanager
def _vector_extension(engine: Engine) -> Iterator[None]:
    """The ``vector`` extension while the demo runs, dropped afterwards if it made it."""
    with engine.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first()
    create_vector_extension(engine)
    try:
        yield
    finally:
        if found is None:
            with engine.begin() as conn:
                conn.execute(text("DROP EXTENSION vector"))


def _create_app_table(
    engine: Engine, config: Config, items: Table, vectors: npt.NDArray[np.float32]
) -> None:
    started = time.perf_counter()
    command.upgrade(config, "0001")
    with engine.begin() as conn:
        copy_vectors(conn, items, "embedding", vectors, {"id": range(len(vectors))})
    print(f"1. alembic upgrade 0001: app table {TABLE}, loaded {len(vectors)} rows of "
          f"{DIMS}-dim vectors ({time.perf_counter() - started:.1f} s)")


def _migrate(engine: Engine, config: Config, revision: str, what: str) -> float:
    """Upgrade to ``revision``, print what it did; the seconds it took."""
    started = time.perf_counter()
    command.upgrade(config, revision)
    with engine.begin() as conn:
        conn.execute(text(f"ANALYZE {TableRef(TABLE).sql}"))
    step = "2" if revision == "0002" else "3"
    seconds = time.perf_counter() - started
    print(f"{step}. alembic upgrade {revision}: {what}, index "
          f"{_megabytes(_index_bytes(engine, PREFIX_INDEX))} ({seconds:.1f} s)")
    return seconds


@dataclass(frozen=True)
class Choice:
    """The candidate count chosen for ``mrl_search``, its recall, and whether it reached the
    recall aimed at."""

    candidates: int
    recall: float
    reached: bool
    tried: tuple[tuple[int, float], ...]


def choose_candidates(
    recall_at: Callable[[int], float], target: float, ladder: Sequence[int]
) -> Choice:
    """The smallest count of ``ladder`` whose recall reaches ``target`` (counts above it are
    not tried); if none does, the one with the best recall (the smallest of equals)."""
    tried: list[tuple[int, float]] = []
    for count in ladder:
        tried.append((count, recall_at(count)))
        if tried[-1][1] >= target:
            return Choice(count, tried[-1][1], True, tuple(tried))
    count, recall = max(tried, key=lambda pair: (pair[1], -pair[0]))
    return Choice(count, recall, False, tuple(tried))


@dataclass(frozen=True)
class Timed:
    """One search's results and medians over the repeats."""

    found: list[list[int]]
    ms_per_query: float
    p50_ms: float
    p99_ms: float


def _report(
    engine: Engine,
    items: Table,
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    prefix_s: float,
) -> None:
    truth = exact_neighbors(vectors, queries, K)
    with _autocommit(engine) as conn:
        rows = conn.execute(mrl_search(items, queries[0], k=5)).all()
    print("4. mrl_search(items, query, k=5):")
    for row in rows:
        print(f"     id={row.id:<8} distance={row.distance:.4f}")

    started = time.perf_counter()
    with engine.begin() as conn:
        Index(
            FULL_INDEX,
            items.c.embedding,
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ).create(conn)
    full_s = time.perf_counter() - started
    full_bytes, prefix_bytes = _index_bytes(engine, FULL_INDEX), _index_bytes(engine, PREFIX_INDEX)

    def full(query: npt.NDArray[np.float32]) -> Select[Any]:
        return select(items.c.id).order_by(items.c.embedding.op("<=>")(query)).limit(K)

    def two_stage(candidates: int) -> Callable[[npt.NDArray[np.float32]], Select[Any]]:
        return lambda query: mrl_search(select(items.c.id), query, k=K, candidates=candidates)

    with _autocommit(engine) as conn:
        full_recall = recall_at_k(_search_all(conn, full, queries), truth)
        ef_search = conn.execute(text("SELECT current_setting('hnsw.ef_search')")).scalar_one()
        print(f"5. full-dimension HNSW index for comparison: {_megabytes(full_bytes)} "
              f"({full_s:.1f} s), recall@{K} {full_recall:.3f} at ef_search {ef_search}")
        choice = choose_candidates(
            lambda count: recall_at_k(_search_all(conn, two_stage(count), queries), truth),
            full_recall,
            CANDIDATE_LADDER,
        )
        _print_choice(choice, full_recall)
        mrl, full_timed = _timed_in_turns(
            conn, [two_stage(choice.candidates), full], queries, REPEATS
        )
    print(f"7. at {'matched' if choice.reached else 'the closest'} recall, {len(queries)} "
          f"queries x {REPEATS} repeats, one client (medians):")
    for name, timed in ((f"mrl_search, {choice.candidates} candidates", mrl),
                        (f"full-dim HNSW, ef_search {ef_search}", full_timed)):
        print(f"     {name:<30} recall@{K}={recall_at_k(timed.found, truth):.3f}  "
              f"{timed.ms_per_query:.2f} ms/query  p50={timed.p50_ms:.2f} ms  "
              f"p99={timed.p99_ms:.2f} ms")
    speedup = full_timed.ms_per_query / mrl.ms_per_query
    print(f"     mrl_search / full-dim HNSW: queries/s x{speedup:.2f}, "
          f"index size x{prefix_bytes / full_bytes:.2f} ({_megabytes(prefix_bytes)} / "
          f"{_megabytes(full_bytes)}), build time x{prefix_s / full_s:.2f} (the whole "
          f"migration to the {PREFIX_DIMS}-dim prefix, {prefix_s:.1f} s / the index, "
          f"{full_s:.1f} s)")


def _print_choice(choice: Choice, target: float) -> None:
    tried = ", ".join(f"{count} -> {recall:.3f}" for count, recall in choice.tried)
    if choice.reached:
        print(f"6. mrl_search candidates to reach recall@{K} {target:.3f} ({tried}): "
              f"{choice.candidates}")
    else:
        print(f"6. mrl_search candidates to reach recall@{K} {target:.3f} ({tried}): none "
              f"does; mrl_search cannot match the full index's recall here with up to "
              f"{max(CANDIDATE_LADDER)} candidates, and is compared at its best, "
              f"{choice.candidates} candidates ({choice.recall:.3f})")


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def _search_all(
    conn: Connection,
    build: Callable[[npt.NDArray[np.float32]], Select[Any]],
    queries: npt.NDArray[np.float32],
) -> list[list[int]]:
    return [[int(i) for i in conn.execute(build(query)).scalars()] for query in queries]


def _timed_in_turns(
    conn: Connection,
    searches: Sequence[Callable[[npt.NDArray[np.float32]], Select[Any]]],
    queries: npt.NDArray[np.float32],
    repeats: int,
) -> list[Timed]:
    """Each search over every query, ``repeats`` times, taking turns; medians of the repeats."""
    runs: list[list[tuple[list[list[int]], list[float]]]] = [[] for _ in searches]
    for _ in range(repeats):
        for search, done in zip(searches, runs, strict=True):
            done.append(_timed(conn, search, queries))
    timed = []
    for done in runs:
        timed.append(Timed(
            found=done[0][0],
            ms_per_query=statistics.median(float(np.mean(lat)) for _, lat in done),
            p50_ms=statistics.median(float(np.percentile(lat, 50)) for _, lat in done),
            p99_ms=statistics.median(float(np.percentile(lat, 99)) for _, lat in done),
        ))
    return timed


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
    return found, latencies


def _index_bytes(engine: Engine, index: str) -> int:
    with engine.connect() as conn:
        size = conn.execute(
            text("SELECT pg_relation_size(CAST(:name AS regclass))"), {"name": index}
        ).scalar_one()
    return int(size)


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
