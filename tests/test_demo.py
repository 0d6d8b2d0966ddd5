"""The demo command and the demo app's migrations."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from mrl_pg.tools.cli import main
from mrl_pg.tools.demo import CANDIDATE_LADDER, alembic_config, choose_candidates


def tables_and_extensions(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    with engine.connect() as conn:
        tables = set(
            conn.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            ).scalars()
        )
        extensions = set(conn.execute(text("SELECT extname FROM pg_extension")).scalars())
    engine.dispose()
    return tables, extensions


@pytest.mark.slow
def test_demo_runs_through_its_migrations_and_leaves_the_app_alone(
    schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_engine(schema_url)
    with app.begin() as conn:  # the app's own Alembic history, which the demo must not touch
        conn.execute(text("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('app_head')"))
    monkeypatch.setenv("MRL_PG_DSN", schema_url)
    assert main(["demo", "--rows", "3000", "--queries", "10"]) == 0
    out = capsys.readouterr().out
    assert "1. alembic upgrade 0001: app table mrl_pg_demo_items, loaded 3000 rows" in out
    assert "2. alembic upgrade 0002: added a 256-dim halfvec prefix" in out
    assert "3. alembic upgrade head: shrank the prefix to 128 dims" in out
    assert out.count("     id=") == 5
    ef_search = re.search(r"5\. full-dimension HNSW index for comparison: .* at ef_search (\d+)",
                          out)
    assert ef_search is not None, "the full index's recall at the server's ef_search"
    assert "6. mrl_search candidates to reach recall@10" in out
    chosen = re.search(r"mrl_search, (\d+) candidates +recall@10=([\d.]+)", out)
    full = re.search(rf"full-dim HNSW, ef_search {ef_search[1]} +recall@10=([\d.]+)", out)
    assert chosen is not None and full is not None
    assert int(chosen[1]) in CANDIDATE_LADDER
    if "7. at matched recall" in out:
        assert float(chosen[2]) >= float(full[1])
    else:
        assert "7. at the closest recall" in out and "cannot match" in out
    assert "mrl_search / full-dim HNSW: queries/s x" in out and "index size x" in out
    tables, _ = tables_and_extensions(schema_url)
    assert tables == {"alembic_version"}, "the demo cleans up after itself"
    with app.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).all() == [
            ("app_head",)
        ]
    app.dispose()


@pytest.mark.parametrize("table", ["mrl_pg_demo_items", "mrl_pg_demo_version"])
def test_demo_refuses_a_database_holding_its_tables(
    schema_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    table: str,
) -> None:
    app = create_engine(schema_url)
    with app.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id integer)"))
        conn.execute(text(f"INSERT INTO {table} VALUES (7)"))
    monkeypatch.setenv("MRL_PG_DSN", schema_url)
    assert main(["demo", "--rows", "100", "--queries", "1"]) == 2
    err = capsys.readouterr().err
    assert f"mrl-pg demo: error: the database already has a table {table!r}" in err
    with app.connect() as conn:
        assert conn.execute(text(f"SELECT id FROM {table}")).scalars().all() == [7]
    app.dispose()


@pytest.fixture
def database_without_vector(database_url: str, server_engine: Engine) -> Iterator[str]:
    """A new, empty database on the test server (skips where the role may not create one)."""
    name = f"mrl_pg_demo_{uuid.uuid4().hex[:12]}"
    admin = server_engine.execution_options(isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except DBAPIError as exc:
        pytest.skip(f"cannot create a database here: {exc.orig}")
    yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_demo_drops_the_vector_extension_it_created(
    database_without_vector: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MRL_PG_DSN", database_without_vector)
    assert main(["demo", "--rows", "500", "--queries", "2"]) == 0
    tables, extensions = tables_and_extensions(database_without_vector)
    assert tables == set()
    assert "vector" not in extensions


def test_demo_migrations_match_the_demo_models(schema_url: str) -> None:
    with alembic_config(schema_url) as config:
        command.upgrade(config, "head")
        command.check(config)  # demo_app.py and the head revision agree
        command.downgrade(config, "base")


def test_the_demo_gives_mrl_search_the_fewest_candidates_that_match_the_full_index() -> None:
    asked: list[int] = []
    recall = {40: 0.95, 80: 0.985, 160: 0.995, 320: 0.999}

    def recall_at(count: int) -> float:
        asked.append(count)
        return recall[count]

    choice = choose_candidates(recall_at, 0.985, (40, 80, 160, 320))
    assert (choice.candidates, choice.recall, choice.reached) == (80, 0.985, True)
    assert asked == [40, 80], "no count above the first that reaches the target is tried"
    assert choice.tried == ((40, 0.95), (80, 0.985))


def test_the_demo_falls_back_to_the_best_recall_when_no_count_matches() -> None:
    recall = {40: 0.90, 80: 0.97, 160: 0.98, 320: 0.98}
    choice = choose_candidates(recall.__getitem__, 0.99, (40, 80, 160, 320))
    assert (choice.candidates, choice.recall, choice.reached) == (160, 0.98, False)
    assert [count for count, _ in choice.tried] == [40, 80, 160, 320]
