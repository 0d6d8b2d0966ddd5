"""What a long step of a migration is doing: a table rewrite, announced with its size, and
an index build, whose progress is logged while it runs.

A ``CREATE INDEX`` holds its connection until it is done, so the progress is read on a second
connection from PostgreSQL's ``pg_stat_progress_create_index`` view, every
``PROGRESS_INTERVAL`` seconds, and logged at INFO on the ``alembic.mrl_pg`` logger. Progress
is best effort: when it cannot be read, the build goes on unreported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import AssertionPool, StaticPool

from mrl_pg.side_thread import in_background
from mrl_pg.sqltext import TableRef

logger = logging.getLogger("alembic.mrl_pg")

#: Seconds between two logged progress reports.
PROGRESS_INTERVAL = 5.0
#: From this many rows, or bytes, a plain change's table rewrite is logged as a warning.
LARGE_TABLE_ROWS = 1_000_000
LARGE_TABLE_BYTES = 1 << 30

_SIZE_SQL = text(
    """
    SELECT sum(c.reltuples) FILTER (WHERE c.reltuples >= 0)::bigint AS rows,
           coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS bytes
    FROM pg_class c
    WHERE c.relkind = 'r' AND (c.oid = to_regclass(:table) OR c.oid IN (
        SELECT relid FROM pg_partition_tree(to_regclass(:table)) WHERE isleaf))
    """
)

_PROGRESS_SQL = text(
    """
    SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total
    FROM pg_stat_progress_create_index WHERE pid = :pid
    """
)


def announce_rewrite(connection: Connection, table: TableRef, column: str) -> None:
    """Log, before it starts, that adding generated ``column`` rewrites ``table``, and how
    big the table is: a warning that suggests online mode when the table is large."""
    size = connection.execute(_SIZE_SQL, {"table": table.sql}).one()
    large = (size.rows or 0) >= LARGE_TABLE_ROWS or size.bytes >= LARGE_TABLE_BYTES
    rows = f"about {size.rows:,} rows, " if size.rows is not None else ""
    logger.log(
        logging.WARNING if large else logging.INFO,
        "mrl_pg: adding %s rewrites %s (%s%s MB) under an ACCESS EXCLUSIVE lock%s",
        column,
        table.sql,
        rows,
        f"{size.bytes / 1e6:,.0f}",
        "; online=True would keep the table available" if large else "",
    )


@contextmanager
def index_build_progress(connection: Connection, index: str) -> Iterator[None]:
    """Log how far the index build that ``connection`` runs inside the block has got. The
    second connection comes from the engine's pool; pools that hold a single connection
    cannot give one, and the build then goes unreported."""
    if isinstance(connection.engine.pool, (StaticPool, AssertionPool)):
        yield
        return
    pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
    interval = PROGRESS_INTERVAL

    def watch(stop: threading.Event) -> None:
        last = ""
        try:
            with connection.engine.connect() as watcher:
                while not stop.wait(interval):
                    row = watcher.execute(_PROGRESS_SQL, {"pid": pid}).first()
                    watcher.rollback()
                    if row is not None and describe(row) != last:
                        last = describe(row)
                        logger.info("mrl_pg: building %s: %s", index, last)
        except SQLAlchemyError as error:
            logger.debug("no progress for %s: %s", index, error)

    with in_background(watch, f"progress of {index}"), _build_notices(connection, index):
        yield


@contextmanager
def server_notices(connection: Connection | None, handle: Callable[[str], None]) -> Iterator[None]:
    """Pass the primary message of each notice the server sends on ``connection`` to
    ``handle`` while the block runs. Only psycopg connections have a notice hook; with other
    drivers, or no connection, notices go unread."""
    dbapi_connection: Any = connection.connection.dbapi_connection if connection else None
    if dbapi_connection is None or not hasattr(dbapi_connection, "add_notice_handler"):
        yield
        return

    def on_notice(diagnostic: Any) -> None:
        handle(diagnostic.message_primary or "")

    dbapi_connection.add_notice_handler(on_notice)
    try:
        yield
    finally:
        dbapi_connection.remove_notice_handler(on_notice)


def _build_notices(connection: Connection, index: str) -> AbstractContextManager[None]:
    """Log what the server says during the build as warnings: pgvector says when the graph
    outgrows ``maintenance_work_mem``, and the build slows down many times."""

    def handle(message: str) -> None:
        if message.startswith("mrl_pg:"):
            return
        advice = (
            "; op.execute(\"SET maintenance_work_mem = '2GB'\") before the operation raises it"
            " for the migration"
            if "maintenance_work_mem" in message
            else ""
        )
        logger.warning("mrl_pg: building %s: %s%s", index, message, advice)

    return server_notices(connection, handle)


def describe(row: Any) -> str:
    """``phase, done of total unit (percent)``, with tuples or blocks, whichever it counts."""
    for unit, done, total in (
        ("tuples", row.tuples_done, row.tuples_total),
        ("blocks", row.blocks_done, row.blocks_total),
    ):
        if total:
            return f"{row.phase}, {done:,} of {total:,} {unit} ({100 * done // total}%)"
    return str(row.phase)
