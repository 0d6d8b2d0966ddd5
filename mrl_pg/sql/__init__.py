"""The plain-SQL search function, for psql and clients in other languages.

``mrl_pg--<version>.sql`` in this package is the one copy of the script (the repository's
top-level ``sql/`` links to it, for ``psql -f``). It creates ``mrl_search(tbl regclass, query
vector, k integer, candidates integer DEFAULT NULL, prefix_column name DEFAULT NULL,
full_distance text DEFAULT NULL, filter jsonb DEFAULT NULL)``, returning ``(pk jsonb,
distance double precision)`` rows: each row's primary key as a jsonb object and its exact
full-vector distance, nearest first; ``filter`` keeps the rows whose columns equal the values
of a jsonb object.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from sqlalchemy import Connection

from mrl_pg.errors import ConnectionClosedError, MissingExtensionError
from mrl_pg.search.hnsw_settings import pgvector_settings

#: Version of the SQL script this package installs.
SCRIPT_VERSION = "0.1.0"
#: The setting the script's functions use that pgvector 0.8 added.
ITERATIVE_SCAN = "hnsw.iterative_scan"


def script(version: str = SCRIPT_VERSION) -> str:
    """The text of the SQL script of ``version``."""
    return resources.files(__name__).joinpath(f"mrl_pg--{version}.sql").read_text("utf-8")


def install(connection: Connection) -> None:
    """Create (or replace) the SQL functions in the connection's current schema, the first
    on its ``search_path``, inside the connection's transaction. The ``vector`` extension
    must be installed, pgvector 0.8 or newer. With an ``AsyncConnection``:
    ``await conn.run_sync(install)``."""
    dbapi_connection: Any = connection.connection.dbapi_connection
    if dbapi_connection is None:
        raise ConnectionClosedError("the connection is closed")
    if ITERATIVE_SCAN not in pgvector_settings(connection):
        raise MissingExtensionError(
            f"the SQL function needs pgvector 0.8 or newer ({ITERATIVE_SCAN}), which this"
            " database lacks: ALTER EXTENSION vector UPDATE after upgrading pgvector"
        )
    if connection.dialect.driver == "asyncpg":  # its cursors prepare: one statement each
        dbapi_connection.run_async(lambda driver_connection: driver_connection.execute(script()))
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(script())  # no parameters: the whole script in one simple query
    finally:
        cursor.close()


__all__ = ["SCRIPT_VERSION", "install", "script"]
