"""The same API through ``create_async_engine()`` and ``AsyncSession``, with psycopg and with
asyncpg: recall against exact ground truth, and settings scoped to one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Engine, Integer, MetaData, make_url, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix, mrl_search
from mrl_pg.sql import install
from mrl_pg.tools.synthetic import exact_distances, exact_neighbors, mrl_like_vectors, queries_near
from mrl_pg.tools.synthetic import recall_at_k as recall
from tests.conftest import schema_engine
from tests.data import create_and_load

pytest.importorskip("greenlet", reason="SQLAlchemy's asyncio support needs greenlet")

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    create_async_engine,
)

ROWS = 4_000
DIMS = 256
TENANTS = 50
QUERIES = 50
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=31)
QUERY_VECTORS = queries_near(VECTORS, QUERIES, seed=32)

T = TypeVar("T")


class Base(DeclarativeBase):
    metadata = MetaData()


class AsyncItem(MRLSearchMixin, Base):
    __tablename__ = "async_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_64 = mrl_prefix(embedding, 64)


@pytest.fixture(scope="module")
def schema(database_url: str, server_engine: Engine) -> Iterator[str]:
    with schema_engine(database_url, server_engine) as engine:
        create_and_load(
            engine,
            AsyncItem.__table__,  # type: ignore[arg-type]
            "embedding",
            VECTORS,
            {"id": list(range(ROWS)), "tenant": [i % TENANTS for i in range(ROWS)]},
        )
        with engine.connect() as conn:
            yield str(conn.execute(text("SELECT current_schema()")).scalar_one())


@pytest.fixture(params=["psycopg", "asyncpg"])
def driver(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    pytest.importorskip(name)
    return name


def run(
    database_url: str, schema: str, driver: str, body: Callable[[AsyncEngine], Awaitable[T]]
) -> T:
    """Run ``body`` with an async engine of ``driver`` on the module's schema, in a fresh
    event loop."""
    search_path = f"{schema},public"
    connect_args: dict[str, Any] = (
        {"server_settings": {"search_path": search_path}}
        if driver == "asyncpg"
        else {"options": f"-c search_path={search_path}"}
    )
    url = make_url(database_url).set(drivername=f"postgresql+{driver}")

    async def main() -> T:
        engine = create_async_engine(url, connect_args=connect_args)
        try:
            return await body(engine)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def settings_now(session: AsyncSession) -> tuple[Any, Any]:
    await session.execute(text("SELECT '[1]'::vector"))  # loads pgvector and its settings
    return (
        await session.scalar(text("SHOW hnsw.ef_search")),
        await session.scalar(text("SHOW hnsw.iterative_scan")),
    )


def test_recall_and_exact_distances(database_url: str, schema: str, driver: str) -> None:
    async def body(engine: AsyncEngine) -> list[list[int]]:
        found = []
        async with AsyncSession(engine) as session:
            for query in QUERY_VECTORS:
                rows = (await session.execute(AsyncItem.mrl_search(query, k=10))).all()
                ids = [item.id for item, _ in rows]
                expected = exact_distances(
                    VECTORS[ids].astype(np.float64), query[None].astype(np.float64),
                    AsyncItem.embedding_64.info["mrl_pg"].spec.distance,
                )[0]
                np.testing.assert_allclose([d for _, d in rows], expected, atol=1e-5)
                found.append(ids)
        return found

    found = run(database_url, schema, driver, body)
    assert recall(found, exact_neighbors(VECTORS, QUERY_VECTORS, 10)) >= 0.95


def test_filtered_search(database_url: str, schema: str, driver: str) -> None:
    tenant = 3
    keep = np.flatnonzero(np.arange(ROWS) % TENANTS == tenant)
    truth = keep[exact_neighbors(VECTORS[keep], QUERY_VECTORS, 10)]

    async def body(engine: AsyncEngine) -> list[list[int]]:
        async with AsyncSession(engine) as session:
            found = []
            for query in QUERY_VECTORS:
                stmt = mrl_search(select(AsyncItem).where(AsyncItem.tenant == tenant), query, 10)
                rows = (await session.execute(stmt)).all()
                assert len(rows) == 10
                assert {item.tenant for item, _ in rows} == {tenant}
                found.append([item.id for item, _ in rows])
            return found

    assert recall(run(database_url, schema, driver, body), truth) >= 0.90


def test_settings_are_applied_and_do_not_leak(database_url: str, schema: str, driver: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        async with AsyncSession(engine) as session:
            before = await settings_now(session)
            wide = AsyncItem.mrl_search(QUERY_VECTORS[0], k=200, candidates=300)
            assert len((await session.execute(wide)).all()) == 200
            assert await settings_now(session) == before  # same transaction
            capped = AsyncItem.mrl_search(
                QUERY_VECTORS[0], k=200, candidates=300, ef_search=40, iterative_scan="off"
            )
            assert len((await session.execute(capped)).all()) == 40
            await session.commit()
            assert await settings_now(session) == before  # next transaction

    run(database_url, schema, driver, body)


def test_settings_restored_in_autocommit_mode(database_url: str, schema: str, driver: str) -> None:
    async def body(engine: AsyncEngine) -> None:
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        async with autocommit.connect() as conn:
            await conn.execute(text("SELECT '[1]'::vector"))  # loads pgvector's settings
            before = await conn.scalar(text("SHOW hnsw.ef_search"))
            await conn.execute(AsyncItem.mrl_search(QUERY_VECTORS[1], k=10, candidates=500))
            assert await conn.scalar(text("SHOW hnsw.ef_search")) == before
            bad = mrl_search(
                select(AsyncItem).where(text("1/0 = 1")), QUERY_VECTORS[1], 10, candidates=500
            )
            with pytest.raises(Exception, match="division by zero"):
                await conn.execute(bad)
            assert await conn.scalar(text("SHOW hnsw.ef_search")) == before

    run(database_url, schema, driver, body)


def test_concurrent_sessions_keep_their_own_settings(database_url: str, schema: str, driver: str) -> None:
    async def one(engine: AsyncEngine, ef_search: int) -> tuple[int, tuple[Any, Any]]:
        async with AsyncSession(engine) as session:
            stmt = AsyncItem.mrl_search(
                QUERY_VECTORS[2], k=300, candidates=300, ef_search=ef_search, iterative_scan="off"
            )
            count = len((await session.execute(stmt)).all())
            return count, await settings_now(session)

    async def body(engine: AsyncEngine) -> list[tuple[int, tuple[Any, Any]]]:
        return list(await asyncio.gather(*(one(engine, ef) for ef in (40, 100, 300) * 3)))

    results = run(database_url, schema, driver, body)
    assert [count for count, _ in results] == [40, 100, 300] * 3
    assert {after for _, after in results} == {("40", "off")}


def test_sql_function_installs_and_runs(database_url: str, schema: str, driver: str) -> None:
    """With index scans off and every row a candidate, the function's search is exact."""
    async def body(engine: AsyncEngine) -> list[int]:
        async with engine.begin() as conn:
            await conn.run_sync(install)
            await conn.execute(text("SET LOCAL enable_indexscan = off"))
            rows = await conn.execute(
                text(
                    "SELECT pk FROM mrl_search('async_items', CAST(:q AS vector), 5,"
                    " candidates => :rows)"
                ).columns(pk=JSONB),
                {"q": str(QUERY_VECTORS[3].tolist()), "rows": ROWS},
            )
            return [pk["id"] for pk in rows.scalars()]

    expected = exact_neighbors(VECTORS, QUERY_VECTORS[3:4], 5)[0].tolist()
    assert run(database_url, schema, driver, body) == expected
