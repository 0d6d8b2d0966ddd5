"""Search settings on servers whose pgvector lacks some of them, and on a database without
pgvector. An older pgvector's missing setting behaves as any ``hnsw.*`` name this pgvector
does not define: once the library is loaded, PostgreSQL refuses to set it. The tests add such a
name to the settings every search makes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, bindparam, create_engine, func, make_url, select, text
from sqlalchemy.exc import ProgrammingError

from mrl_pg.errors import MissingExtensionError, PgvectorFeatureWarning
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
