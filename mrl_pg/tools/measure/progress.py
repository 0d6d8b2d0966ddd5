"""Progress bars for loops and index builds, shown only when stderr is a terminal.

Bars use ``tqdm`` when it is installed; without it, or off a terminal, they are silent. An
index build reports its progress in ``pg_stat_progress_create_index`` (pgvector fills in
tuples done / total while it loads the graph); :func:`index_build_bar` polls that view from a
second connection while the build runs on the first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, text

from mrl_pg.side_thread import in_background

_T = TypeVar("_T")

#: Seconds between two looks at ``pg_stat_progress_create_index``.
POLL_SECONDS = 0.5

PROGRESS_SQL = text(
    "SELECT phase, tuples_done, tuples_total FROM pg_stat_progress_create_index WHERE pid = :pid"
)


def enabled() -> bool:
    return sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None


def _tqdm(**options: Any) -> Any:
    return importlib.import_module("tqdm").tqdm(**options)  # optional, untyped


def tracked(items: Iterable[_T], description: str, total: int | None = None) -> Iterator[_T]:
    """``items``, with a bar when :func:`enabled`."""
    if not enabled():
        yield from items
        return
    with _tqdm(total=total, desc=description, leave=False) as bar:
        for item in items:
            yield item
            bar.update(1)


@contextmanager
def index_build_bar(engine: Engine, builder_pid: int, description: str) -> Iterator[None]:
    """While the body builds an index on the session ``builder_pid``, show its progress."""
    if not enabled():
        yield
        return

    def watch(stop: threading.Event) -> None:
        _watch(engine, builder_pid, description, stop)

    with in_background(watch, f"progress of {description}"):
        yield


def _watch(engine: Engine, pid: int, description: str, stop: threading.Event) -> None:
    with engine.connect() as conn, _tqdm(desc=description, unit="rows", leave=False) as bar:
        while not stop.wait(POLL_SECONDS):
            row = conn.execute(PROGRESS_SQL, {"pid": pid}).first()
            conn.rollback()  # a fresh snapshot of the statistics each time
            if row is None:
                continue
            phase, done, total = row
            bar.set_postfix_str(str(phase))
            if total:
                bar.total = int(total)
                bar.n = int(done)
                bar.refresh()
