"""Searches, the SQL function and online migrations through PgBouncer in transaction mode.

Runs when ``MRL_PG_PGBOUNCER_DSN`` names a PgBouncer in ``pool_mode = transaction``
(``bash .ci/pgbouncer.sh`` starts one, with ``default_pool_size = 2``, and prints its DSN). The
tables are made through the server behind it, ``MRL_PG_PGBOUNCER_DIRECT_DSN``, by default the
address and port the server reports through the pooler. PgBouncer ignores the ``options``
start-up parameter, so tables are named with their schema.

Several clients share the pooler's two server connections, so each statement may run on either:
searches must never leave their settings for other clients, and must always run with them. The
clients start together at a barrier; reader loops stop once the searches are done (or after a
bounded number of reads).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    make_url,
    select,
    text,
)
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema, DropSchema

from mrl_pg import add_prefix_column, mrl_search
from mrl_pg.alembic import MRLPrefix
from mrl_pg.alembic.pooler import PoolerError, require_direct_connection
from mrl_pg.load import copy_vectors
from mrl_pg.sql import install
from mrl_pg.tools.server import sqlalchemy_url
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near
from mrl_pg.tools.synthetic import recall_at_k as recall

POOLER_DSN = os.environ.get("MRL_PG_PGBOUNCER_DSN", "")
pytestmark = pytest.mark.skipif(
    not POOLER_DSN,
    reason="MRL_PG_PGBOUNCER_DSN is not set: no PgBouncer in transaction mode to test"
    " through (bash .ci/pgbouncer.sh starts one and prints its DSN)",
)

ROWS = 10_000
DIMS = 64
GROUPS = 64  # ``grp = id % 64`` keeps 1.6% of the rows
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=61)
QUERY_VECTORS = queries_near(VECTORS, 20, seed=62)
SCHEMA = f"mrl_pg_pooler_{uuid.uuid4().hex[:10]}"
TABLE = f"{SCHEMA}.items"

metadata = MetaData(schema=SCHEMA)
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("grp", Integer, nullable=False),
    Column("embedding", VECTOR(DIMS), nullable=False),
)
add_prefix_column(items, "embedding", 16)

#: What a client that never searched must read: pgvector's defaults.
DEFAULTS = {"hnsw.ef_search": "40", "hnsw.iterative_scan": "off", "hnsw.max_scan_tuples": "20000"}
READ_SETTINGS = text(
    "SELECT current_setting('hnsw.ef_search', true), current_setting('hnsw.iterative_scan', true),"
    " current_setting('hnsw.max_scan_tuples', true)"
)
SEARCHERS = 3
READERS = 3
SEARCHES = 12  # per searcher, more than psycopg's default prepare_threshold of 5
MAX_READS = 2_000  # per reader: the bound on a reader's loop


def pooler_url(driver: str = "psycopg") -> str:
    url = make_url(sqlalchemy_url(POOLER_DSN)).set(drivername=f"postgresql+{driver}")
    return url.render_as_string(hide_password=False)


def pooler_engine(**options: Any) -> Engine:
    """An engine through the pooler, configured as the README says: psycopg never prepares."""
    return create_engine(
        pooler_url(), connect_args={"prepare_threshold": None}, pool_size=8, **options
    )


@pytest.fixture(scope="module")
def direct_url() -> str:
    dsn = os.environ.get("MRL_PG_PGBOUNCER_DIRECT_DSN")
    if dsn:
        return sqlalchemy_url(dsn)
    with psycopg.connect(POOLER_DSN, prepare_threshold=None, autocommit=True) as conn:
        host, port = conn.execute("SELECT host(inet_server_addr()), inet_server_port()").fetchone()  # type: ignore[misc]
    return make_url(pooler_url()).set(host=host, port=port).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def pooled(direct_url: str) -> Iterator[Engine]:
    """The table (and the SQL function) made through the server, an engine through the pooler."""
    admin = create_engine(direct_url, connect_args={"options": f"-c search_path={SCHEMA},public"})
    with admin.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        conn.execute(CreateSchema(SCHEMA))
        items.create(conn)
        for index in items.indexes:
            index.drop(conn)
        ids = np.arange(ROWS)
        copy_vectors(conn, items, "embedding", VECTORS, {"id": ids.tolist(),
                                                          "grp": (ids % GROUPS).tolist()})
        conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 0"))
        for index in items.indexes:
            index.create(conn)
        conn.execute(text(f"ANALYZE {TABLE}"))
        install(conn)
    engine = pooler_engine()
    with engine.connect() as conn:  # each search shape's statement template, built once
        search_on(conn, 0)
        search_on(conn, 1)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(DropSchema(SCHEMA, cascade=True))
        admin.dispose()


def filtered_truth(query: npt.NDArray[np.float32], group: int, k: int) -> list[int]:
    keep = np.flatnonzero(np.arange(ROWS) % GROUPS == group)
    return keep[exact_neighbors(VECTORS[keep], query[None], k)[0]].tolist()  # type: ignore[no-any-return]


def wide_search(query: npt.NDArray[np.float32]) -> Any:
    """A search whose settings other clients must not see (``hnsw.ef_search = 321``)."""
    return mrl_search(items, query, k=10, ef_search=321)


def filtered_search(query: npt.NDArray[np.float32], group: int) -> Any:
    """A search that needs ``hnsw.iterative_scan``: 1.6% of the rows pass its filter."""
    return mrl_search(select(items.c.id).where(items.c.grp == group), query, k=10)


class Clients:
    """Searchers and readers started together; what readers saw and searchers got."""

    def __init__(self) -> None:
        self.start = threading.Barrier(SEARCHERS + READERS)
        self.searches_done = threading.Event()
        self.finished = 0
        self.lock = threading.Lock()
        self.reads: list[tuple[str, str, str]] = []
        self.errors: list[BaseException] = []
        self.short: list[int] = []

    def run(self, search: Callable[[int], list[Any]], read: Callable[[], tuple[str, str, str]]) -> None:
        threads = [threading.Thread(target=self._searcher, args=(search, n)) for n in range(SEARCHERS)]
        threads += [threading.Thread(target=self._reader, args=(read,)) for _ in range(READERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _searcher(self, search: Callable[[int], list[Any]], n: int) -> None:
        self.start.wait()
        try:
            for i in range(SEARCHES):
                rows = search(n * SEARCHES + i)
                if len(rows) != 10:
                    self.short.append(len(rows))
        except BaseException as error:
            self.errors.append(error)
        finally:
            with self.lock:
                self.finished += 1
                if self.finished == SEARCHERS:
                    self.searches_done.set()

    def _reader(self, read: Callable[[], tuple[str, str, str]]) -> None:
        self.start.wait()
        try:
            for _ in range(MAX_READS):
                self.reads.append(read())
                if self.searches_done.is_set():
                    break
        except BaseException as error:
            self.errors.append(error)

    def check(self) -> None:
        assert not self.errors, self.errors[0]
        assert not self.short, f"searches returned {self.short} rows instead of 10"
        # A server connection PgBouncer opened for a reader, on which no search ran, has not
        # loaded pgvector: its hnsw.* settings do not exist yet (NULL), which is as clean.
        clean = (tuple(DEFAULTS.values()), (None, None, None))
        leaked = [row for row in self.reads if row not in clean]
        assert self.reads and not leaked, f"{len(leaked)} of {len(self.reads)} reads: {leaked[:3]}"


def search_on(connection: Connection, i: int) -> list[Any]:
    query = QUERY_VECTORS[i % len(QUERY_VECTORS)]
    if i % 2:
        return list(connection.execute(wide_search(query)).all())
    rows = connection.execute(filtered_search(query, i % GROUPS)).all()
    assert all(row.id % GROUPS == i % GROUPS for row in rows)
    return list(rows)


def read_on(engine: Engine) -> tuple[str, str, str]:
    with engine.connect() as conn:
        row = conn.execute(READ_SETTINGS).one()
    return (row[0], row[1], row[2])


def test_autocommit_searches_leave_nothing_for_other_clients(pooled: Engine) -> None:
    autocommit = pooled.execution_options(isolation_level="AUTOCOMMIT")

    def search(i: int) -> list[Any]:
        with autocommit.connect() as conn:
            return search_on(conn, i)

    clients = Clients()
    clients.run(search, lambda: read_on(autocommit))
    clients.check()


def test_searches_in_transactions_leave_nothing_for_other_clients(pooled: Engine) -> None:
    def search(i: int) -> list[Any]:
        if i % 3:
            with pooled.connect() as conn:
                rows = search_on(conn, i)
                shown = conn.execute(READ_SETTINGS).one()  # the kept values are back
                assert tuple(shown) == tuple(DEFAULTS.values())
                rows += search_on(conn, i + 1)
                conn.commit()
                return rows[:10]
        with Session(pooled) as session:
            rows = search_on(session.connection(), i)
            session.commit()
            return rows

    clients = Clients()
    clients.run(search, lambda: read_on(pooled))
    clients.check()


def test_async_searches_leave_nothing_for_other_clients(pooled: Engine) -> None:
    async def main() -> tuple[list[tuple[str, str, str]], list[int]]:
        engine = create_async_engine(
            pooler_url("psycopg_async"), connect_args={"prepare_threshold": None}, pool_size=8
        )
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        start, done = asyncio.Event(), asyncio.Event()
        reads: list[tuple[str, str, str]] = []
        counts: list[int] = []

        async def searcher(n: int) -> None:
            await start.wait()
            for i in range(n * SEARCHES, (n + 1) * SEARCHES):
                query = QUERY_VECTORS[i % len(QUERY_VECTORS)]
                statement = wide_search(query) if i % 2 else filtered_search(query, i % GROUPS)
                async with (autocommit if n % 2 else engine).connect() as conn:
                    counts.append(len((await conn.execute(statement)).all()))
                    await conn.commit()

        async def reader() -> None:
            await start.wait()
            for _ in range(MAX_READS):
                async with autocommit.connect() as conn:
                    row = (await conn.execute(READ_SETTINGS)).one()
                reads.append((row[0], row[1], row[2]))
                if done.is_set():
                    break

        try:
            readers = [asyncio.create_task(reader()) for _ in range(READERS)]
            searchers = [asyncio.create_task(searcher(n)) for n in range(SEARCHERS)]
            start.set()
            await asyncio.gather(*searchers)
            done.set()
            await asyncio.gather(*readers)
        finally:
            await engine.dispose()
        return reads, counts

    reads, counts = asyncio.run(main())
    assert counts == [10] * (SEARCHERS * SEARCHES)
    leaked = [row for row in reads if row != tuple(DEFAULTS.values())]
    assert reads and not leaked, f"{len(leaked)} of {len(reads)} reads: {leaked[:3]}"


def run_beside_other_clients(pooled: Engine, work: Callable[[Connection, int], None]) -> None:
    """``work`` on SEARCHERS clients at once, each ``SEARCHES`` times on autocommit and on
    transactional connections, beside clients that run other searches."""
    autocommit = pooled.execution_options(isolation_level="AUTOCOMMIT")
    start = threading.Barrier(2 * SEARCHERS)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        start.wait()
        try:
            for i in range(SEARCHES):
                engine = autocommit if (n + i) % 2 else pooled
                with engine.connect() as conn:
                    if n < SEARCHERS:
                        work(conn, n * SEARCHES + i)
                    else:
                        conn.execute(mrl_search(items, QUERY_VECTORS[i], k=5, ef_search=40)).all()
                    conn.commit()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(2 * SEARCHERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]


def test_a_search_keeps_its_ef_search_through_the_pooler(pooled: Engine) -> None:
    """100 rows without an iterative scan need ``hnsw.ef_search`` >= 100 (pgvector's 40 gives
    at most 40): the search's own setting must reach the server connection it runs on."""
    counts: list[int] = []

    def work(conn: Connection, i: int) -> None:
        query = QUERY_VECTORS[i % len(QUERY_VECTORS)]
        search = mrl_search(items, query, k=100, candidates=200, iterative_scan="off")
        counts.append(len(conn.execute(search).all()))

    run_beside_other_clients(pooled, work)
    assert counts == [100] * (SEARCHERS * SEARCHES)


def test_a_selective_filter_keeps_its_iterative_scan_through_the_pooler(pooled: Engine) -> None:
    found: dict[int, list[int]] = {}

    def work(conn: Connection, i: int) -> None:
        query, group = QUERY_VECTORS[i % len(QUERY_VECTORS)], i % GROUPS
        found[i] = [row.id for row in conn.execute(filtered_search(query, group))]

    run_beside_other_clients(pooled, work)
    assert all(len(ids) == 10 for ids in found.values()), {i: len(v) for i, v in found.items()}
    truth = np.array(
        [filtered_truth(QUERY_VECTORS[i % len(QUERY_VECTORS)], i % GROUPS, 10) for i in found]
    )
    assert recall(list(found.values()), truth) >= 0.9


def test_the_sql_function_works_and_leaves_nothing_through_the_pooler(pooled: Engine) -> None:
    autocommit = pooled.execution_options(isolation_level="AUTOCOMMIT")
    sql = text(
        f"SELECT (pk->>'id')::int FROM {SCHEMA}.mrl_search("
        "CAST(:tbl AS regclass), CAST(:q AS vector), 10, candidates => 321)"
    )

    def search(i: int) -> list[Any]:
        query = QUERY_VECTORS[i % len(QUERY_VECTORS)]
        with (autocommit if i % 2 else pooled).connect() as conn:
            ids = conn.execute(sql, {"tbl": TABLE, "q": str(query.tolist())}).scalars().all()
            conn.commit()
        truth = exact_neighbors(VECTORS, query[None], 10)
        assert recall([list(ids)], truth) >= 0.7
        return list(ids)

    clients = Clients()
    clients.run(search, lambda: read_on(autocommit))
    clients.check()


def test_searches_repeated_across_connections_work_with_prepare_threshold_none(
    pooled: Engine,
) -> None:
    """The documented configuration: psycopg's ``prepare_threshold=None``. Every statement
    (the searches, mrl_pg's restore and capability statements, the app's own) runs more than
    psycopg's default threshold of 5 times on each connection, while the pooler moves them
    between its server connections."""

    def work(conn: Connection, i: int) -> None:
        search_on(conn, i)
        conn.execute(text("SELECT 1")).one()

    run_beside_other_clients(pooled, work)


def test_an_online_migration_through_the_pooler_stops_before_any_ddl(
    pooled: Engine, direct_url: str
) -> None:
    prefix = MRLPrefix("embedding_online", "embedding", DIMS, 8)
    with pooled.connect() as conn:
        context = MigrationContext.configure(conn)
        with context.begin_transaction(), pytest.raises(PoolerError, match="direct connection"):
            Operations(context).add_mrl_prefix(  # type: ignore[attr-defined]
                "items", prefix, schema=SCHEMA, online=True
            )
        columns = conn.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass)"
                " AND attnum > 0 AND NOT attisdropped"
            ),
            {"t": TABLE},
        ).scalars().all()
        conn.rollback()
    assert not any(name.startswith("embedding_online") for name in columns)


def test_a_direct_connection_passes_the_pooler_check(direct_url: str) -> None:
    engine = create_engine(direct_url)
    try:
        with engine.connect() as conn:
            require_direct_connection(Operations(MigrationContext.configure(conn)))
    finally:
        engine.dispose()
