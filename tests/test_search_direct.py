"""A search sent straight to psycopg (mrl_pg.search.direct) returns what SQLAlchemy's own
execution returns, and is sent that way only where nothing else would happen around it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    CursorResult,
    Engine,
    Integer,
    MetaData,
    Text,
    create_engine,
    event,
    make_url,
    select,
    text,
)
from sqlalchemy.exc import DBAPIError, InvalidRequestError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix, mrl_search
from mrl_pg.search.direct import SearchRows
from mrl_pg.tools.server import scratch_schema
from mrl_pg.tools.synthetic import mrl_like_vectors, queries_near
from tests.data import create_and_load

ROWS = 2_000
DIMS = 16
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=71)
QUERIES = queries_near(VECTORS, 5, seed=72)


class Base(DeclarativeBase):
    metadata = MetaData()


class Doc(MRLSearchMixin, Base):
    __tablename__ = "direct_docs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS))
    embedding_8 = mrl_prefix(embedding, 8)


class Missing(MRLSearchMixin, Base):
    """Declared, never created: searching it fails on the server."""

    __tablename__ = "direct_missing"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS))
    embedding_8 = mrl_prefix(embedding, 8)


TABLE: Any = Doc.__table__


class Database:
    """Where the docs are: makes engines whose connections search their schema first."""

    def __init__(self, url: str, search_path: str) -> None:
        self.url = url
        self.options = f"-c search_path={search_path}"

    def engine(self, **kwargs: Any) -> Engine:
        kwargs.setdefault("isolation_level", "AUTOCOMMIT")
        return create_engine(self.url, connect_args={"options": self.options}, **kwargs)


@pytest.fixture(scope="module")
def database(database_url: str, server_engine: Engine) -> Iterator[Database]:
    with scratch_schema(database_url, "direct", admin=server_engine) as engine:
        create_and_load(
            engine,
            TABLE,
            "embedding",
            VECTORS,
            {
                "id": list(range(ROWS)),
                "tenant": [i % 4 for i in range(ROWS)],
                "title": [f"doc {i}" for i in range(ROWS)],
            },
        )
        with engine.connect() as conn:
            search_path = str(conn.scalar(text("SELECT current_setting('search_path')")))
        yield Database(database_url, search_path.replace(" ", ""))


@pytest.fixture
def autocommit(database: Database) -> Iterator[Engine]:
    """A fresh engine in autocommit mode, with no listeners: where searches run directly."""
    engine = database.engine()
    yield engine
    engine.dispose()


def through_sqlalchemy(database: Database) -> Engine:
    """The same database on an engine with a listener, so searches run through SQLAlchemy."""
    engine = database.engine()
    event.listen(engine, "before_cursor_execute", lambda *args: None)
    return engine


def test_a_search_on_an_autocommit_connection_runs_directly(autocommit: Engine) -> None:
    with autocommit.connect() as conn:
        result = conn.execute(mrl_search(select(TABLE.c.id), QUERIES[0], 5))
        assert isinstance(result, SearchRows)
        assert result.returns_rows
        rows = result.all()
    assert len(rows) == 5
    assert result.rowcount == 5


def test_direct_rows_equal_the_rows_sqlalchemy_returns(
    database: Database, autocommit: Engine
) -> None:
    reference = through_sqlalchemy(database)
    searches = [
        lambda q: mrl_search(select(TABLE.c.id, TABLE.c.title), q, 7),
        lambda q: mrl_search(select(TABLE.c.id).where(TABLE.c.tenant == 2), q, 4),
        lambda q: mrl_search(TABLE, q, 3),
        lambda q: mrl_search(select(Doc.id, Doc.embedding), q, 3),
    ]
    try:
        with autocommit.connect() as direct, reference.connect() as slow:
            for search in searches:
                for query in QUERIES:
                    fast = direct.execute(search(query))
                    usual = slow.execute(search(query))
                    assert isinstance(fast, SearchRows)
                    assert isinstance(usual, CursorResult)
                    assert list(fast.keys()) == list(usual.keys())
                    got, want = fast.all(), usual.all()
                    assert len(got) == len(want)
                    for left, right in zip(got, want, strict=True):
                        assert left._mapping.keys() == right._mapping.keys()
                        for a, b in zip(left, right, strict=True):
                            if isinstance(b, np.ndarray):  # the vector's result processor ran
                                assert isinstance(a, np.ndarray)
                                np.testing.assert_array_equal(a, b)
                            else:
                                assert a == b
    finally:
        reference.dispose()


def test_direct_results_offer_the_usual_result_api(autocommit: Engine) -> None:
    with autocommit.connect() as conn:
        ids = conn.scalars(mrl_search(select(TABLE.c.id), QUERIES[1], 4)).all()
        assert len(ids) == 4 and all(isinstance(i, int) for i in ids)
        mapping = conn.execute(mrl_search(select(TABLE.c.id), QUERIES[1], 4)).mappings().first()
        assert mapping is not None and mapping["id"] == ids[0]
        assert conn.scalar(mrl_search(select(TABLE.c.id), QUERIES[1], 4)) == ids[0]
        one = conn.execute(mrl_search(select(TABLE.c.id), QUERIES[1], 1)).one()
        assert one.id == ids[0] and one.distance >= 0
        assert [row.id for row in conn.execute(mrl_search(select(TABLE.c.id), QUERIES[1], 4))] == ids


def test_a_search_begins_a_transaction_as_any_statement_does(autocommit: Engine) -> None:
    with autocommit.connect() as conn:
        assert not conn.in_transaction()
        conn.execute(mrl_search(select(TABLE.c.id), QUERIES[0], 2)).all()
        assert conn.in_transaction()
        conn.commit()
        assert not conn.in_transaction()


def test_listeners_and_logging_see_every_search(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    listened = database.engine()
    event.listen(listened, "before_cursor_execute", lambda c, cur, sql, *rest: seen.append(sql))
    echoing = database.engine(echo=True)
    try:
        with listened.connect() as conn:
            result = conn.execute(mrl_search(select(TABLE.c.id), QUERIES[0], 2))
            assert isinstance(result, CursorResult)
        assert any("mrl_settings" in sql for sql in seen)
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"), echoing.connect() as conn:
            result = conn.execute(mrl_search(select(TABLE.c.id), QUERIES[0], 2))
            assert isinstance(result, CursorResult)
        assert any("mrl_settings" in record.getMessage() for record in caplog.records)
    finally:
        listened.dispose()
        echoing.dispose()


def test_changed_copies_options_and_parameters_run_through_sqlalchemy(
    autocommit: Engine,
) -> None:
    search = mrl_search(select(TABLE.c.id), QUERIES[2], 5)
    with autocommit.connect() as conn:
        for statement in (
            search.limit(3),
            search.where(search.selected_columns.id > 10),
            search.execution_options(preserve_rowcount=True),
        ):
            assert isinstance(conn.execute(statement), CursorResult)
        assert isinstance(conn.execute(search, {"mrl_query": QUERIES[3]}), CursorResult)
        segment = conn.execution_options(mrl_pg_segment="tenant 2")
        assert isinstance(segment.execute(search), SearchRows)
        counting = conn.execution_options(preserve_rowcount=True)
        assert isinstance(counting.execute(search), CursorResult)


def test_orm_sessions_run_searches_through_sqlalchemy(database: Database) -> None:
    engine = database.engine(isolation_level="READ COMMITTED")
    try:
        with Session(engine) as session:
            docs = session.scalars(Doc.mrl_search(QUERIES[0], 2)).all()
            assert all(isinstance(doc, Doc) for doc in docs)
    finally:
        engine.dispose()


def test_a_server_error_is_sqlalchemys_error(autocommit: Engine) -> None:
    with autocommit.connect() as conn:
        with pytest.raises(ProgrammingError, match="direct_missing"):
            conn.execute(mrl_search(Missing, QUERIES[0], 2))
        conn.rollback()
        assert len(conn.execute(mrl_search(TABLE, QUERIES[0], 2)).all()) == 2


def test_a_lost_connection_is_invalidated_and_replaced(autocommit: Engine) -> None:
    with autocommit.connect() as conn:
        conn.execute(mrl_search(TABLE, QUERIES[0], 2)).all()
        pid = conn.scalar(text("SELECT pg_backend_pid()"))
        with autocommit.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as lost:
            conn.execute(mrl_search(TABLE, QUERIES[0], 2))
        assert lost.value.connection_invalidated
        assert isinstance(lost.value, OperationalError)
        conn.rollback()
        rows = conn.execute(mrl_search(TABLE, QUERIES[0], 2)).all()
        assert len(rows) == 2
        assert conn.scalar(text("SELECT pg_backend_pid()")) != pid


def test_direct_searches_keep_their_own_settings(autocommit: Engine) -> None:
    """The settings are made inside the statement, as on the usual path: a search with 200
    candidates at ``ef_search`` 40 and no iterative scan yields at most 40 candidates."""
    with autocommit.connect() as conn:
        capped = conn.execute(
            mrl_search(TABLE, QUERIES[4], 100, candidates=200, ef_search=40, iterative_scan="off")
        )
        assert isinstance(capped, SearchRows)
        assert len(capped.all()) <= 40
        wide = conn.execute(
            mrl_search(TABLE, QUERIES[4], 100, candidates=200, iterative_scan="off")
        )
        assert len(wide.all()) == 100
        assert conn.scalar(text("SELECT current_setting('hnsw.ef_search')")) == "40"


def test_the_connection_facts_the_check_reads_are_still_there(autocommit: Engine) -> None:
    with autocommit.connect() as conn:
        for name in ("_has_events", "_echo", "_handle_dbapi_exception", "_execution_options"):
            assert hasattr(conn, name), f"SQLAlchemy dropped Connection.{name}: see direct.py"
        assert hasattr(conn.engine, "_has_events") and hasattr(conn.dialect, "_has_events")
    compiled: Any = mrl_search(TABLE, QUERIES[0], 2).compile(dialect=autocommit.dialect)
    assert hasattr(compiled, "_bind_processors") and hasattr(compiled, "_result_columns")


def test_searches_in_a_transaction_run_directly_and_put_settings_back(
    database: Database,
) -> None:
    engine = database.engine(isolation_level="READ COMMITTED")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT '[1]'::vector"))
            conn.execute(text("SET hnsw.ef_search = 33"))
            result = conn.execute(mrl_search(TABLE, QUERIES[0], 100, candidates=200))
            assert isinstance(result, SearchRows)
            assert len(result.all()) == 100
            again = conn.execute(mrl_search(TABLE, QUERIES[1], 100, candidates=200))
            assert isinstance(again, SearchRows)  # mrl_pg's own listeners are no obstacle
            assert conn.scalar(text("SELECT current_setting('hnsw.ef_search')")) == "33"
            conn.commit()
            assert not conn.in_transaction()
    finally:
        engine.dispose()


def test_a_search_where_sqlalchemy_refuses_statements_gets_its_error(
    autocommit: Engine,
) -> None:
    with autocommit.begin() as conn:
        conn.commit()
        with pytest.raises(InvalidRequestError, match="closed transaction"):
            conn.execute(mrl_search(TABLE, QUERIES[0], 2))


def test_async_psycopg_searches_run_directly(database: Database) -> None:
    url = make_url(database.url).set(drivername="postgresql+psycopg")

    async def main() -> tuple[list[Any], list[Any], type, type]:
        engine = create_async_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"options": database.options}
        )
        reference = create_async_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"options": database.options}
        )
        event.listen(reference.sync_engine, "before_cursor_execute", lambda *args: None)
        try:
            async with engine.connect() as fast, reference.connect() as usual:
                direct = await fast.execute(mrl_search(select(TABLE.c.id), QUERIES[0], 6))
                through = await usual.execute(mrl_search(select(TABLE.c.id), QUERIES[0], 6))
                return direct.all(), through.all(), type(direct), type(through)
        finally:
            await engine.dispose()
            await reference.dispose()

    direct, through, direct_type, through_type = asyncio.run(main())
    assert issubclass(direct_type, SearchRows)
    assert issubclass(through_type, CursorResult)
    assert direct == through and len(direct) == 6


def test_listeners_to_other_events_leave_searches_direct(database: Database) -> None:
    engine = database.engine()
    connected: list[Any] = []
    event.listen(engine, "engine_connect", connected.append)
    event.listen(engine, "do_connect", lambda *args: None)
    try:
        with engine.connect() as conn:
            assert isinstance(conn.execute(mrl_search(TABLE, QUERIES[0], 2)), SearchRows)
            event.listen(conn, "after_execute", lambda *args: None)
            assert isinstance(conn.execute(mrl_search(TABLE, QUERIES[0], 2)), CursorResult)
        assert connected
    finally:
        engine.dispose()
