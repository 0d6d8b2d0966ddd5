"""How a search statement reaches the server: every way of executing it applies its settings,
statements that are not searches run no mrl_pg code at all, the SQLAlchemy hooks this relies
on are still there, and psycopg adaptation changes only on connections that ran a search."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import pytest
from pgvector.sqlalchemy import VECTOR
from psycopg.adapt import PyFormat
from sqlalchemy import (
    Connection,
    Engine,
    Integer,
    MetaData,
    Select,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.events import ConnectionEvents, DialectEvents, PoolEvents
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Query,
    Session,
    defer,
    mapped_column,
    sessionmaker,
)
from sqlalchemy.sql.elements import ClauseElement

import mrl_pg
from mrl_pg import MRLQuery, MRLSearchMixin, mrl_prefix, mrl_search
from mrl_pg.search.query_vector import BinaryQueryVector
from mrl_pg.search.search_select import SearchSelect
from mrl_pg.tools.server import scratch_schema
from mrl_pg.tools.synthetic import mrl_like_vectors, queries_near
from tests.data import create_and_load

ROWS = 3_000
DIMS = 16
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=51)
QUERY = queries_near(VECTORS, 1, seed=52)[0]
#: A search whose 100 rows need ``hnsw.ef_search`` raised from pgvector's default of 40.
WIDE = {"k": 100, "candidates": 200, "iterative_scan": "off"}
#: The same search held to 40 candidates by its own settings.
CAPPED = {"k": 100, "candidates": 200, "ef_search": 40, "iterative_scan": "off"}
EF_SEARCH = text("SELECT current_setting('hnsw.ef_search', true)")
PACKAGE = str(Path(mrl_pg.__file__).resolve().parent)


class Base(DeclarativeBase):
    metadata = MetaData()


class Point(MRLSearchMixin, Base):
    __tablename__ = "hook_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_8 = mrl_prefix(embedding, 8)


@pytest.fixture(scope="module")
def points_engine(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    """The points, on connections that never plan a sequential scan: on a table this small
    PostgreSQL may otherwise rank exactly, which would hide whether ``ef_search`` applied."""
    with scratch_schema(
        database_url, "t", admin=server_engine, options="-c enable_seqscan=off"
    ) as engine:
        table: Any = Point.__table__
        create_and_load(engine, table, "embedding", VECTORS, {"id": list(range(ROWS))})
        yield engine


def user_ef_search(conn: Connection | Session) -> None:
    """Load pgvector and give ``hnsw.ef_search`` a value of the user's own, 33."""
    conn.execute(text("SELECT '[1]'::vector"))
    conn.execute(text("SET hnsw.ef_search = 33"))


def test_the_private_sqlalchemy_hooks_are_still_there() -> None:
    hook = inspect.signature(Select._execute_on_connection)
    assert list(hook.parameters) == [
        "self", "connection", "distilled_params", "execution_options"
    ], "SQLAlchemy changed Executable._execute_on_connection: SearchSelect must follow"
    legacy = inspect.signature(Query._statement_20)
    assert list(legacy.parameters) == ["self", "for_statement", "use_legacy_query_style"], (
        "SQLAlchemy changed Query._statement_20: SearchQuery must follow"
    )
    assert "_execute_on_connection" in vars(SearchSelect)
    assert ClauseElement._execute_on_connection is not SearchSelect._execute_on_connection


def test_generative_methods_keep_the_search_and_its_settings() -> None:
    stmt = Point.mrl_search(QUERY, **WIDE)
    settings = stmt.search_settings
    assert dict(settings)["hnsw.ef_search"] == "400"
    for derived in (
        stmt.where(Point.id > 3),
        stmt.limit(5),
        stmt.options(defer(Point.embedding)),
        stmt.execution_options(yield_per=5),
        stmt.params(mrl_query=QUERY),
    ):
        assert isinstance(derived, SearchSelect)
        assert derived.search_settings == settings


def every_way_of_running(engine: Engine) -> dict[str, Callable[[Any], list[Any]]]:
    """Each public way to execute a statement, returning its rows."""

    def core(stmt: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(stmt).all())

    def core_scalars(stmt: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.scalars(stmt).all())

    def core_autocommit(stmt: Any) -> list[Any]:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return list(conn.execute(stmt).all())

    def orm(stmt: Any) -> list[Any]:
        with Session(engine) as session:
            return list(session.execute(stmt).all())

    def orm_scalars(stmt: Any) -> list[Any]:
        with Session(engine) as session:
            return list(session.scalars(stmt).all())

    def orm_streamed(stmt: Any) -> list[Any]:
        with Session(engine) as session:
            return list(session.execute(stmt.execution_options(yield_per=7)).all())

    return {
        "core": core,
        "core_scalars": core_scalars,
        "core_autocommit": core_autocommit,
        "orm": orm,
        "orm_scalars": orm_scalars,
        "orm_streamed": orm_streamed,
    }


@pytest.mark.parametrize(
    "way", ["core", "core_scalars", "core_autocommit", "orm", "orm_scalars", "orm_streamed"]
)
def test_every_way_of_running_a_search_applies_its_settings(
    points_engine: Engine, way: str
) -> None:
    run = every_way_of_running(points_engine)[way]
    assert len(run(Point.mrl_search(QUERY, **WIDE))) == 100
    assert len(run(Point.mrl_search(QUERY, **CAPPED))) <= 40
    table: Any = Point.__table__
    assert len(run(mrl_search(table, QUERY, **WIDE))) == 100


def test_scalar_results_apply_the_settings_too(points_engine: Engine) -> None:
    shown = select(func.current_setting("hnsw.ef_search").label("ef"), Point.id)
    search = mrl_search(shown, QUERY, k=5, ef_search=77)
    with points_engine.connect() as conn:
        assert conn.scalar(search) == "77"
        assert set(conn.scalars(search).all()) == {"77"}
    with Session(points_engine) as session:
        assert session.scalar(search) == "77"
        assert {row.ef for row in session.execute(search)} == {"77"}


def test_the_legacy_query_applies_its_settings(points_engine: Engine) -> None:
    with sessionmaker(points_engine, query_cls=MRLQuery)() as session:
        query: Any = session.query(Point)
        wide = query.mrl_search(QUERY, **WIDE)
        assert len(wide.all()) == 100
        assert len(list(wide)) == 100
        assert len(query.mrl_search(QUERY, **CAPPED).all()) <= 40
        nearest, distance = wide.first()
        assert isinstance(nearest, Point) and distance >= 0
        assert wide.count() == 100
        assert query.mrl_search(QUERY, **CAPPED).count() <= 40
        with pytest.raises(InvalidRequestError, match="full statement"):
            wide.filter(Point.id > 3)


def test_a_search_embedded_in_a_search_select(points_engine: Engine) -> None:
    search = Point.mrl_search(QUERY, **WIDE)
    counted = SearchSelect(func.count(), settings=search.search_settings)
    with points_engine.connect() as conn:
        conn.invalidate()  # a new DBAPI connection, on which no search has run
        assert conn.scalar(counted.select_from(search.subquery())) == 100
        assert conn.execute(EF_SEARCH).scalar_one() == "40", "put back before the next statement"


def test_statement_caching_still_works(points_engine: Engine) -> None:
    compiled: dict[Any, Any] = {}
    with points_engine.connect().execution_options(compiled_cache=compiled) as conn:
        for query in queries_near(VECTORS, 3, seed=53):
            conn.execute(Point.mrl_search(query, **WIDE)).all()
        assert len(compiled) == 1, "searches of one shape share one compiled statement"
        conn.execute(Point.mrl_search(QUERY, **CAPPED)).all()
        assert len(compiled) == 1, "the settings are not part of the compiled statement"


def mrl_pg_calls(run: Callable[[], object]) -> list[str]:
    """The mrl_pg functions called while ``run()`` runs (on this thread)."""
    seen: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            seen.append(f"{frame.f_code.co_filename}:{frame.f_code.co_name}")

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return seen


def mrl_pg_listeners(engine: Engine) -> list[str]:
    """Event listeners from mrl_pg on ``engine`` or its pool, including those registered on
    their classes (an instance's listener collections include its class's)."""
    found = []
    for dispatch, events in (
        (engine.dispatch, ConnectionEvents),
        (engine.dialect.dispatch, DialectEvents),
        (engine.pool.dispatch, PoolEvents),
    ):
        for name, _ in inspect.getmembers(events, inspect.isfunction):
            if name.startswith("_"):
                continue
            for listener in getattr(dispatch, name):
                found += [f"{name}: {fn!r}" for fn in _unwrapped(listener)
                          if str(getattr(fn, "__module__", "")).startswith("mrl_pg")]
    return found


def _unwrapped(listener: Any) -> list[Any]:
    """A listener and the functions it wraps (SQLAlchemy wraps some in a closure)."""
    cells = getattr(listener, "__closure__", None) or ()
    return [listener] + [cell.cell_contents for cell in cells if callable(cell.cell_contents)]


def test_the_listener_probe_sees_class_level_listeners(points_engine: Engine) -> None:
    def before_cursor_execute(*args: Any) -> None:
        pass

    before_cursor_execute.__module__ = "mrl_pg.search.hnsw_settings"
    event.listen(Engine, "before_cursor_execute", before_cursor_execute)
    try:
        assert f"before_cursor_execute: {before_cursor_execute!r}" in mrl_pg_listeners(
            points_engine
        )
    finally:
        event.remove(Engine, "before_cursor_execute", before_cursor_execute)


RESTORE_LISTENERS = {"before_cursor_execute", "commit", "rollback", "reset"}


def test_only_engines_that_search_in_transactions_get_listeners(
    database_url: str, points_engine: Engine
) -> None:
    """Autocommit searches need nothing after them; a search in a transaction has the next
    statement that is not a search put its settings back, through listeners registered on
    that engine (never on a class) the first time."""
    with (
        scratch_schema(database_url, "t") as other,
        points_engine.connect() as conn,
    ):
        conn.execute(Point.mrl_search(QUERY, **WIDE)).all()
        assert {name.split(":")[0] for name in mrl_pg_listeners(points_engine)} == (
            RESTORE_LISTENERS
        )
        assert mrl_pg_listeners(other) == []
    autocommit_only = create_engine(database_url, isolation_level="AUTOCOMMIT")
    with scratch_schema(database_url, "t", admin=autocommit_only) as engine:
        table: Any = Point.__table__
        create_and_load(engine, table, "embedding", VECTORS[:100], {"id": list(range(100))})
        searching = engine.execution_options(isolation_level="AUTOCOMMIT")
        with searching.connect() as conn:
            assert len(conn.execute(Point.mrl_search(QUERY, k=5)).all()) == 5
        assert mrl_pg_listeners(engine) == []
    autocommit_only.dispose()


def test_statements_that_are_not_searches_see_nothing_and_pay_a_flag_check(
    points_engine: Engine,
) -> None:
    table: Any = Point.__table__
    plain = select(table.c.id).where(table.c.id < 3)
    restore_check = {f"{PACKAGE}/search/hnsw_settings.py:_restore_if_pending"}
    with points_engine.connect() as conn:
        user_ef_search(conn)
        assert mrl_pg_calls(lambda: conn.execute(Point.mrl_search(QUERY, **WIDE)).all()), (
            "the probe sees a search's own calls"
        )
        assert conn.execute(EF_SEARCH).scalar_one() == "33"  # same transaction, put back
        assert set(mrl_pg_calls(lambda: conn.execute(plain).all())) == restore_check
        conn.execute(Point.mrl_search(QUERY, **WIDE)).all()
        conn.execute(Point.mrl_search(QUERY, **CAPPED)).all()
        assert conn.execute(EF_SEARCH).scalar_one() == "33"
    with Session(points_engine) as session:
        session.execute(Point.mrl_search(QUERY, **WIDE)).all()
        assert session.execute(EF_SEARCH).scalar_one() == "40"
        assert set(mrl_pg_calls(lambda: session.execute(select(Point).limit(2)).all())) == (
            restore_check
        )
    with points_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        user_ef_search(conn)
        conn.execute(Point.mrl_search(QUERY, **WIDE)).all()
        assert conn.execute(EF_SEARCH).scalar_one() == "33"


def test_settings_outlive_a_streamed_search_until_the_end_of_its_transaction(
    points_engine: Engine,
) -> None:
    with Session(points_engine) as session:
        user_ef_search(session)
        session.commit()
        streamed = Point.mrl_search(QUERY, **WIDE).execution_options(yield_per=7)
        assert len(session.execute(streamed).all()) == 100
        assert session.execute(EF_SEARCH).scalar_one() == "400"
        session.commit()
        assert session.execute(EF_SEARCH).scalar_one() == "33"
        assert len(session.execute(Point.mrl_search(QUERY, **WIDE)).all()) == 100
        assert session.execute(EF_SEARCH).scalar_one() == "33", "not streamed: put back"


def test_psycopg_adaptation_changes_only_on_connections_that_searched(
    points_engine: Engine,
) -> None:
    if points_engine.dialect.driver != "psycopg":
        pytest.skip("the binary query vector is psycopg's")
    with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
        psycopg.adapters.get_dumper(BinaryQueryVector, PyFormat.BINARY)
    with points_engine.connect() as conn:
        conn.invalidate()  # a new DBAPI connection, on which nothing has run yet
        adapters = conn.connection.dbapi_connection.adapters  # type: ignore[union-attr]
        with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
            adapters.get_dumper(BinaryQueryVector, PyFormat.BINARY)
        assert len(conn.execute(Point.mrl_search(QUERY, **WIDE)).all()) == 100
        assert adapters.get_dumper(BinaryQueryVector, PyFormat.BINARY)
    with pytest.raises(psycopg.ProgrammingError, match="cannot adapt"):
        psycopg.adapters.get_dumper(BinaryQueryVector, PyFormat.BINARY)
