"""Run mrl_pg end to end on a demo table: add a prefix, search, compare with full HNSW.

Uses ``MRL_PG_DSN`` when set, else starts the embedded PostgreSQL server. The schema comes from
the demo app's Alembic migrations (the repository's ``migrations/``, shipped in the package as
``mrl_pg.demo_migrations``): the app table, then ``op.add_mrl_prefix`` (256 dims), then
``op.resize_mrl_prefix`` (down to 128).

On a database of yours the demo leaves everything as it found it: it refuses to start if its
table or its Alembic version table (``mrl_pg_demo_version``, not your ``alembic_version``)
exists, and afterwards drops what it made, the ``vector`` extension too if it created it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
        _migrate(engine, config, "head", f"shrank the prefix to {PREFIX_DIMS} dims")
        add_prefix_column(items, "embedding", PREFIX_DIMS, name="embedding_mrl")
        _report(engine, items, vectors, queries)
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


def _migrate(engine: Engine, config: Config, revision: str, what: str) -> None:
    started = time.perf_counter()
    command.upgrade(config, revision)
    with engine.begin() as conn:
        conn.execute(text(f"ANALYZE {TableRef(TABLE).sql}"))
    step = "2" if revision == "0002" else "3"
    print(f"{step}. alembic upgrade {revision}: {what}, index "
          f"{_index_size(engine, 'ix_mrl_pg_demo_items_embedding_mrl_hnsw')} "
          f"({time.perf_counter() - started:.1f} s)")


def _report(
    engine: Engine,
    items: Table,
    vectors: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
) -> None:
    truth = exact_neighbors(vectors, queries, 10)
    with engine.connect() as conn:
        rows = conn.execute(mrl_search(items, queries[0], k=5)).all()
        print("4. mrl_search(items, query, k=5):")
        for row in rows:
            print(f"     id={row.id:<8} distance={row.distance:.4f}")
        mrl = _timed(conn, lambda q: mrl_search(select(items.c.id), q, k=10), queries)

    started = time.perf_counter()
    with engine.begin() as conn:
        Index(
            "demo_full_hnsw",
            items.c.embedding,
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ).create(conn)
    build = time.perf_counter() - started
    print(f"5. full-dimension HNSW index for comparison: {_index_size(engine, 'demo_full_hnsw')} "
          f"({build:.1f} s)")
    with engine.connect() as conn:
        distance = items.c.embedding.op("<=>")
        full = _timed(
            conn,
            lambda q: select(items.c.id).order_by(distance(q)).limit(10),
            queries,
        )
    print("6. recall@10 against exact search, latency over "
          f"{len(queries)} queries (one client):")
    for name, (found, latencies) in (("mrl_search", mrl), ("full-dim HNSW", full)):
        print(f"     {name:<14} recall@10={recall_at_k(found, truth):.3f}  "
              f"p50={np.percentile(latencies, 50):.2f} ms  "
              f"p99={np.percentile(latencies, 99):.2f} ms")


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
        conn.commit()
    return found, latencies


def _index_size(engine: Engine, index: str) -> str:
    with engine.connect() as conn:
        size = conn.execute(
            text("SELECT pg_size_pretty(pg_relation_size(CAST(:name AS regclass)))"),
            {"name": index},
        ).scalar_one()
    return str(size)
