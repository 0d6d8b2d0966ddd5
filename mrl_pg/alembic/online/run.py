"""Running an :class:`~mrl_pg.alembic.online.OnlineChange` inside an Alembic migration.

The steps run outside the migration's transaction (Alembic's ``autocommit_block``), so that
backfill batches commit one by one and ``CREATE INDEX CONCURRENTLY`` can run; operations
earlier in the same migration are committed first. Progress is logged at INFO on the
``alembic.mrl_pg`` logger, which Alembic's default logging configuration shows.

Each long step is announced on that logger just before it starts, in the thread running the
migration: ``backfilling <staging column> of <table>``, then ``building <index> concurrently``
for each index built. A logging handler can follow a run by these lines, and act at a known
point of it: the step starts only once the handler returns (the tests interrupt runs so).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from alembic.operations import Operations
from sqlalchemy import Connection, text

from mrl_pg.alembic.checks import check
from mrl_pg.alembic.citus import refuse_online_change
from mrl_pg.alembic.online.change import OnlineChange, abandon_sql
from mrl_pg.alembic.online.index_step import build_index, check_index_names, partition_indexes
from mrl_pg.alembic.pooler import require_direct_connection
from mrl_pg.alembic.progress import PROGRESS_INTERVAL, server_notices
from mrl_pg.alembic.reflect import reflect_prefixes
from mrl_pg.sqltext import TableRef

logger = logging.getLogger("alembic.mrl_pg")

def run_online(operations: Operations, change: OnlineChange) -> None:
    """Check, then prepare, backfill, index and swap (only index and swap when no column is
    filled: the column stays as it is, or the new prefix is index-only); in ``--sql`` mode,
    write the script."""
    require_direct_connection(operations)
    if not change.swaps_without_table_lock:
        refuse_online_change(operations, change.table)
    context = operations.get_context()
    live = not context.as_sql
    if live and _already_applied(operations.get_bind(), change):
        logger.info("%s on %s is already in place", change.new.column, change.table.sql)
        return
    check(operations, change.table, adding=change.new, dropping=change.old, resuming=True)
    partitions = partition_indexes(operations.get_bind(), change) if live else None
    if live:
        check_index_names(operations.get_bind(), change, partitions)
    with context.autocommit_block():
        operations.execute("SET statement_timeout = 0")
        if change.builds_column:
            with _progress(operations.get_bind() if live else None):
                operations.execute(change.prepare_sql())
                if live:
                    logger.info("backfilling %s of %s", change.staging_column, change.table.sql)
                operations.execute(change.backfill_sql())
        if live:
            build_index(operations, change, partitions)
        else:
            operations.execute(change.drop_index_sql())
            operations.execute(change.create_index_sql())
        if change.swaps_without_table_lock and partitions is None:
            with _progress(operations.get_bind() if live else None):
                for statement in change.index_swap_sql():
                    operations.execute(statement)
        else:
            renames = [partition.rename_sql() for partition in partitions or ()]
            with _progress(operations.get_bind() if live else None):
                operations.execute(change.swap_sql(renames))
        operations.execute("RESET statement_timeout")
    if live:
        logger.info("%s on %s is in place", change.new.column, change.table.sql)


def abandon_online_change(
    connection: Connection, table_name: str, column: str, *, schema: str | None = None
) -> None:
    """Remove what an unfinished online change of prefix ``column`` left on the table: its
    staging column, index and trigger, or the staging indexes of an index-only change. The
    table's current prefix stays as it is. Runs in the connection's transaction; commit it."""
    connection.execute(text(abandon_sql(TableRef(table_name, schema), column)))


def _already_applied(connection: Connection, change: OnlineChange) -> bool:
    """Whether an earlier run swapped ``change.new`` in but stopped before Alembic recorded
    the revision."""
    if change.old is not None and change.old.column != change.new.column:
        return False
    found = reflect_prefixes(connection, change.table.name, change.table.schema)
    current = found.get(change.new.column)
    table = change.table.name
    return (
        current is not None
        and current.ddl_signature(table) == change.new.ddl_signature(table)
        and not _column_exists(connection, change, change.staging_column)
    )


def _column_exists(connection: Connection, change: OnlineChange, name: str) -> bool:
    return bool(
        connection.execute(
            text(
                "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                "AND attname = :c AND NOT attisdropped)"
            ),
            {"t": change.table.sql, "c": name},
        ).scalar_one()
    )


@contextmanager
def _progress(connection: Connection | None) -> Iterator[None]:
    """Log the server's ``mrl_pg:`` notices while the block runs, backfill batches at most
    every ``PROGRESS_INTERVAL`` seconds, and the last one at the end."""
    last: dict[str, Any] = {"logged_at": 0.0, "message": None}

    def handle(message: str) -> None:
        if not message.startswith("mrl_pg:"):
            return
        now = time.monotonic()
        if "backfill" not in message or now - last["logged_at"] >= PROGRESS_INTERVAL:
            logger.info("%s", message)
            last["logged_at"], last["message"] = now, None
        else:
            last["message"] = message

    try:
        with server_notices(connection, handle):
            yield
    finally:
        if last["message"]:
            logger.info("%s", last["message"])
