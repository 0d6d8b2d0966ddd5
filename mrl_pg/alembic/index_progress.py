"""Progress of a long index build, logged while it runs.

A ``CREATE INDEX`` holds its connection until it is done, so the progress is read on a second
connection from PostgreSQL's ``pg_stat_progress_create_index`` view, every
``PROGRESS_INTERVAL`` seconds, and logged at INFO on the ``alembic.mrl_pg`` logger. Progress
is best effort: when it cannot be read, the build goes on unreported.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import AssertionPool, StaticPool

from mrl_pg.background import in_background

logger = logging.getLogger("alembic.mrl_pg")

#: Seconds between two logged progress reports.
PROGRESS_INTERVAL = 5.0

_PROGRESS_SQL = text(
    """
    SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total
    FROM pg_stat_progress_create_index WHERE pid = :pid
    """
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

    with in_background(watch, f"progress of {index}"):
        yield


def describe(row: Any) -> str:
    """``phase, done of total unit (percent)``, with tuples or blocks, whichever it counts."""
    for unit, done, total in (
        ("tuples", row.tuples_done, row.tuples_total),
        ("blocks", row.blocks_done, row.blocks_total),
    ):
        if total:
            return f"{row.phase}, {done:,} of {total:,} {unit} ({100 * done // total}%)"
    return str(row.phase)
