"""Helpers of the online-migration tests: online revisions, a concurrent writer, and
interruptions."""

from __future__ import annotations

import re
import threading
import time
import warnings
from contextlib import AbstractContextManager
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


def online_revision(config: Config, folder: Path, message: str, batch_size: int = 5_000) -> str:
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
        self.longest_wait = 0.0
        self.writes = 0
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(5)
        next_id = ROWS
        table = items_table()
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not self.stop.is_set():
                vector = self.pool[self.writes % len(self.pool)]
                started = time.perf_counter()
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
                self.longest_wait = max(self.longest_wait, time.perf_counter() - started)
                self.expected[row_id] = vector
                self.writes += 1
        self.engine.dispose()


def cancelling(engine: Engine, query_start: str, delay: float) -> AbstractContextManager[None]:
    """Once a statement starting with ``query_start`` has run for ``delay`` seconds, cancel
    whatever its backend runs until the block ends, as a Ctrl-C or a lost connection would."""

    def watch(stop: threading.Event) -> None:
        pid, seen = None, 0.0
        with engine.connect() as conn:
            while not stop.is_set():
                if pid is None:
                    pid = conn.execute(text(
                        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE :q"
                        " AND pid <> pg_backend_pid()"), {"q": query_start + "%"}).scalar()
                    seen = time.monotonic()
                elif time.monotonic() - seen >= delay:
                    conn.execute(text(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                        " WHERE pid = :p AND state = 'active'"), {"p": pid})
                conn.commit()
                time.sleep(0.005)

    return in_background(watch, "cancelling")
