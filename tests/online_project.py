"""Helpers of the online-migration tests: online revisions, a concurrent writer, and
interruptions."""

from __future__ import annotations

import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, insert, text, update

from mrl_pg.side_thread import in_background
from mrl_pg.tools.synthetic import mrl_like_vectors
from tests.alembic_project import (
    DIMS,
    ROWS,
    SEARCHED_IDS,
    items_table,
    revision,
    write_models,
)

PREFIX_16 = 'add_prefix_column(items, "embedding", 16, name="embedding_mrl")'
PREFIX_32 = 'add_prefix_column(items, "embedding", 32, name="embedding_mrl", storage="vector")'
STAGING = "embedding_mrl_mrl_next"
#: The logger on which online runs announce their steps.
ANNOUNCER = logging.getLogger("alembic.mrl_pg")
#: Seconds a test waits for what a thread or the server must do before it fails.
PATIENCE = 60.0


def online_revision(config: Config, folder: Path, message: str, batch_size: int = 200) -> str:
    """Autogenerate a revision, then make its mrl operations online, as a user would."""
    migration = revision(config, folder, message)
    online = re.sub(
        r"(op\.(?:add|resize|drop)_mrl_prefix\(.*)\)$",
        rf"\1, online=True, batch_size={batch_size})",
        migration,
        flags=re.M,
    )
    path = next(p for p in (folder / "versions").glob("*.py") if p.read_text() == migration)
    path.write_text(online)
    return online


def upgrade_to_plain_16(config: Config, folder: Path) -> None:
    write_models(folder, PREFIX_16)
    revision(config, folder, "add")
    command.upgrade(config, "head")


def check_quietly(config: Config) -> None:
    """``alembic check`` finds nothing to do, and warns of nothing either."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        command.check(config)


class Writer(threading.Thread):
    """Inserts new rows and updates existing ones until stopped, remembering what it wrote."""

    def __init__(self, url: str, options: str) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(url, connect_args={"options": options})
        self.pool = mrl_like_vectors(500, DIMS, seed=11)
        self.expected: dict[int, np.ndarray] = {}
        self.errors: list[BaseException] = []
        self.writes = 0
        self.wrote = threading.Condition()
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(5)
        next_id = ROWS
        table = items_table()
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not self.stop.is_set():
                vector = self.pool[self.writes % len(self.pool)]
                try:
                    if self.writes % 2:
                        row_id = int(rng.integers(1, ROWS))  # row 0 is checked against VECTORS
                        if row_id in SEARCHED_IDS:
                            continue
                        conn.execute(update(table).where(table.c.id == row_id).values(embedding=vector))
                    else:
                        row_id, next_id = next_id, next_id + 1
                        conn.execute(insert(table).values(id=row_id, embedding=vector))
                except Exception as exc:  # every failure is a lost write: collected, asserted on
                    self.errors.append(exc)
                    continue
                self.expected[row_id] = vector
                with self.wrote:
                    self.writes += 1
                    self.wrote.notify_all()
        self.engine.dispose()

    def wait_for_writes(self, count: int) -> None:
        """Return once the writer has written ``count`` more rows."""
        with self.wrote:
            target = self.writes + count
            if not self.wrote.wait_for(lambda: self.writes >= target, timeout=PATIENCE):
                raise AssertionError(f"the writer wrote {self.writes} of {target} rows: {self.errors}")


@contextmanager
def on_announcement(start: str, action: Callable[[], None]) -> Iterator[list[str]]:
    """Call ``action`` each time the online run announces a step with a line starting with
    ``start`` (see :mod:`mrl_pg.alembic.online.run`). It is called in the thread running the
    migration, so the step starts only once ``action`` returns. Yields the lines seen."""
    seen: list[str] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith(start):
                seen.append(record.getMessage())
                action()

    handler = Handler()
    level = ANNOUNCER.level
    ANNOUNCER.setLevel(logging.INFO)
    ANNOUNCER.addHandler(handler)
    try:
        yield seen
    finally:
        ANNOUNCER.removeHandler(handler)
        ANNOUNCER.setLevel(level)


@contextmanager
def interrupted(
    engine: Engine, announcement: str, lock: str, statement: str
) -> Iterator[None]:
    """Interrupt the online run at the step it announces with a line starting with
    ``announcement``, as a Ctrl-C or a lost connection would. Just before the step starts, a
    transaction of the test's runs ``lock``, taking a lock the step's statement (which starts
    with ``statement``) must wait for; once PostgreSQL shows the statement waiting for that
    transaction, it is cancelled. The lock is held until the block ends."""
    locked = threading.Event()
    cancelled: list[int] = []
    failures: list[Exception] = []

    def hold_and_cancel(stop: threading.Event) -> None:
        try:
            with engine.connect() as holder, engine.connect().execution_options(
                isolation_level="AUTOCOMMIT"
            ) as watcher:
                holder.execute(text(lock))
                holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
                locked.set()
                deadline = time.monotonic() + PATIENCE
                # waits-for-the-lock-wait: PostgreSQL tells no one that a backend started
                # waiting for a lock, so pg_stat_activity is asked until it shows the wait.
                while not cancelled and not stop.is_set() and time.monotonic() < deadline:
                    waiting = watcher.execute(text(
                        "SELECT pid FROM pg_stat_activity WHERE query LIKE :statement"
                        " AND :holder = ANY(pg_blocking_pids(pid))"
                    ), {"statement": statement + "%", "holder": holder_pid}).scalar()
                    if waiting is not None:
                        watcher.execute(text("SELECT pg_cancel_backend(:pid)"), {"pid": waiting})
                        cancelled.append(waiting)
                stop.wait(PATIENCE)
                holder.rollback()
        except Exception as exc:  # reported when the block ends
            failures.append(exc)
            locked.set()

    with ExitStack() as stack:

        def take_the_lock() -> None:
            if not locked.is_set():
                stack.enter_context(in_background(hold_and_cancel, "interrupting"))
                assert locked.wait(PATIENCE), "the test's lock was not taken"

        with on_announcement(announcement, take_the_lock) as seen:
            yield
    assert not failures, failures
    assert seen, f"the online run never announced {announcement!r}"
    assert cancelled, f"{statement!r} never waited for the test's lock"
