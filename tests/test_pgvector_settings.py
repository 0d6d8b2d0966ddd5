"""Search settings on servers whose pgvector lacks some of them, on a database without
pgvector, and the check of pgvector's version against mrl_pg's minimum (0.7): the comparison
itself for older versions, which no test server runs, and the real server's version through
the search and migration paths. An older pgvector's missing setting behaves as any ``hnsw.*`` name this pgvector
does not define: once the library is loaded, PostgreSQL refuses to set it. The tests add such a
name to the settings every search makes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Engine, bindparam, create_engine, func, make_url, select, text
from sqlalchemy.exc import ProgrammingError

import mrl_pg.alembic  # noqa: F401  (registers the operations)
from mrl_pg.alembic import MRLPrefix
from mrl_pg.alembic.checks import check_pgvector
from mrl_pg.errors import MissingExtensionError, PgvectorFeatureWarning, PgvectorVersionError
from mrl_pg.pgvector_version import MINIMUM, require_minimum, version_tuple
from mrl_pg.search import hnsw_settings
from mrl_pg.search.hnsw_settings import MANAGED, Settings, TextArray, settings_subquery
from mrl_pg.search.search_select import SearchSelect
from mrl_pg.sql import install
from mrl_pg.sqltext import ident

SHOW_EF_SEARCH = text("SELECT current_setting('hnsw.ef_search')")


def showing_ef_search(settings: Settings) -> SearchSelect:
    """A search statement in all but the search: it makes ``settings`` and shows one."""
    shown = func.current_setting("hnsw.ef_search")
    return SearchSelect(shown, settings=settings).select_from(settings_subquery(settings))


def test_a_setting_the_servers_pgvector_lacks_is_left_out_with_a_warning(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hnsw_settings, "MANAGED", (*MANAGED, "hnsw.not_in_this_pgvector"))
    settings = (("hnsw.ef_search", "77"), ("hnsw.not_in_this_pgvector", "on"))
    searching = showing_ef_search(settings)
    with engine.connect() as conn:
        for _ in range(2):
            with pytest.warns(PgvectorFeatureWarning, match=r"no hnsw\.not_in_this_pgvector "):
                assert conn.execute(searching).scalar_one() == "77"
        assert conn.execute(SHOW_EF_SEARCH).scalar_one() == "40"
        with pytest.raises(ProgrammingError, match=r"hnsw\.not_in_this_pgvector"):
            conn.execute(text("SELECT set_config('hnsw.not_in_this_pgvector', 'on', true)"))


@pytest.fixture
def database_without_pgvector(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    name = f"mrl_pg_no_vector_{os.getpid()}"
    admin = server_engine.execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        try:
            conn.execute(text(f"CREATE DATABASE {ident(name)}"))
        except ProgrammingError as error:
            pytest.skip(f"cannot create a database here: {error.orig}")
    engine = create_engine(make_url(database_url).set(database=name))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {ident(name)}"))


def test_a_text_array_reaches_the_server_element_for_element(engine: Engine) -> None:
    values = ["hnsw.ef_search", "", "relaxed_order", 'a "quoted", {braced} value', "back\\slash"]
    echoed = select(bindparam("values", values, type_=TextArray()))
    with engine.connect() as conn:
        assert conn.execute(echoed).scalar_one() == values


def test_a_database_without_pgvector_is_named_as_such(database_without_pgvector: Engine) -> None:
    settings = (("hnsw.ef_search", "77"),)
    with (
        database_without_pgvector.connect() as conn,
        pytest.raises(MissingExtensionError, match="CREATE EXTENSION vector"),
    ):
        conn.execute(showing_ef_search(settings))


def test_the_sql_function_is_not_installed_without_pgvector(
    database_without_pgvector: Engine,
) -> None:
    with (
        database_without_pgvector.begin() as conn,
        pytest.raises(MissingExtensionError, match="CREATE EXTENSION vector"),
    ):
        install(conn)


@pytest.mark.parametrize(
    ("version", "numbers"),
    [("0.8.0", (0, 8, 0)), ("0.7", (0, 7)), ("0.10.1", (0, 10, 1)), ("1.0.0-dev", (1, 0, 0)),
     ("dev", None)],
)
def test_an_extension_version_reads_as_numbers(version: str, numbers: tuple[int, ...] | None) -> None:
    assert version_tuple(version) == numbers


@pytest.mark.parametrize("version", ["0.4.4", "0.5.1", "0.6.2", "0.6"])
def test_a_pgvector_older_than_0_7_is_refused_by_name(version: str) -> None:
    with pytest.raises(PgvectorVersionError, match=rf"pgvector is {version}; mrl_pg needs 0\.7\.0") as raised:
        require_minimum(version)
    assert isinstance(raised.value, MissingExtensionError)


@pytest.mark.parametrize("version", ["0.7.0", "0.7.4", "0.8.1", "0.10.0", "1.0.0"])
def test_pgvector_0_7_and_newer_pass(version: str) -> None:
    require_minimum(version)


def test_the_servers_pgvector_passes_at_search_and_migration_time(engine: Engine) -> None:
    with engine.connect() as conn:
        version = conn.execute(
            text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar_one()
        assert version_tuple(version) >= MINIMUM
        check_pgvector(conn)
        hnsw_settings.pgvector_settings(conn)
        assert conn.execute(showing_ef_search((("hnsw.ef_search", "77"),))).scalar_one() == "77"


def test_a_migration_adding_a_prefix_without_pgvector_stops_before_any_ddl(
    database_without_pgvector: Engine,
) -> None:
    prefix = MRLPrefix(column="embedding_mrl", full_column="embedding", full_dims=64, dims=16)
    with database_without_pgvector.begin() as conn:
        conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, embedding real[])"))
    with (
        database_without_pgvector.connect() as conn,
        pytest.raises(MissingExtensionError, match="CREATE EXTENSION vector"),
    ):
        Operations(MigrationContext.configure(conn)).add_mrl_prefix("items", prefix)  # type: ignore[attr-defined]
    with database_without_pgvector.connect() as conn:
        columns = conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_name = 'items'"
                 " ORDER BY column_name")
        ).scalars().all()
    assert columns == ["embedding", "id"]
