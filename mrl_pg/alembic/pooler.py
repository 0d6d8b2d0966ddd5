"""Refusing to run an online prefix change through a connection pooler.

An online change runs outside the migration's transaction, statement by statement: ``SET
statement_timeout = 0`` for the rest of the session, backfill batches that commit one by one,
``CREATE INDEX CONCURRENTLY``, and a progress watcher that follows the build by the backend's
pid. A pooler in transaction mode (PgBouncer's ``pool_mode = transaction``, and the poolers
that copy it) sends each of those statements to whichever server connection is free: the
timeout lands on another client's session, the watcher watches the wrong backend. So the
change stops, before any DDL, with a :class:`PoolerError`.

How a pooler is recognised: when a connection starts, PostgreSQL tells the client its backend
pid (with the cancel key, in ``BackendKeyData``); a pooler answers the client's start-up itself
and makes up that pid and key, since the client is not tied to one backend. If the pid the
driver was given is not ``pg_backend_pid()``, something sits between. One statement, inside
the migration's transaction, on the migration's own connection.

Limits:

- It needs the start-up pid from the driver: psycopg (sync and async), psycopg2, asyncpg.
  Other drivers are not checked.
- It flags every pooler that makes up the start-up pid, including one in session mode
  (PgBouncer's ``pool_mode = session``), where an online change would work: telling session
  from transaction pooling needs a second client connection and a free server connection for
  it, and a pooler hands back the most recently freed server connection first (PgBouncer does
  by default), so comparing ``pg_backend_pid()`` across two statements sees the same pid on a
  quiet pool even in transaction mode. A direct connection is what migrations should use
  anyway.
- A pooler that forwards the server's own start-up pid (pgpool-II) is not recognised; it
  pools whole sessions, which online changes can use.
"""

from __future__ import annotations

from typing import Any

from alembic.operations import Operations
from sqlalchemy import Connection, text

from mrl_pg.alembic.checks import MigrationCheckError


class PoolerError(MigrationCheckError):
    """The migration's connection goes through a connection pooler (PgBouncer, ...), which
    an online change cannot run through; point the migration at PostgreSQL itself."""


def require_direct_connection(operations: Operations) -> None:
    """Raise :class:`PoolerError` if the migration's connection goes through a pooler that
    makes up the backend pid it gives clients; nothing to check in ``--sql`` mode."""
    if operations.get_context().as_sql:
        return
    connection = operations.get_bind()
    given = startup_backend_pid(connection)
    if given is None:
        return
    serving = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    if serving != given:
        raise PoolerError(
            "the migration's connection goes through a connection pooler (the server runs it"
            f" in backend {serving}, the connection was told {given} when it started):"
            " an online prefix change runs CREATE INDEX CONCURRENTLY, committed batches and"
            " session settings outside a transaction, which a pooler in transaction mode"
            " spreads over other clients' server connections. Run migrations on a direct"
            " connection to PostgreSQL (its own host and port in sqlalchemy.url)"
        )


def startup_backend_pid(connection: Connection) -> int | None:
    """The backend pid the driver was given when its connection started, or None for a
    driver that does not tell."""
    driver: Any = connection.connection.driver_connection
    driver_name = connection.dialect.driver
    if driver_name == "psycopg":
        return int(driver.info.backend_pid)
    if driver_name == "psycopg2":
        return int(driver.get_backend_pid())
    if driver_name == "asyncpg":
        return int(driver.get_server_pid())
    return None
