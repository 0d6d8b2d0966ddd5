"""Where the recall checks run: connections of the monitor's own, never the user's pool.

- By default, a pool made like the user's (``Pool.recreate()``: the same connect arguments,
  ``connect`` event handlers and pool size), on the same dialect, behind an engine of the
  monitor's. At most ``max_concurrent`` of its connections are ever open, one per worker
  thread, so the user's pool is never drawn on.
- An ``AsyncEngine``'s connections belong to one event loop: each worker thread runs a loop
  of its own with an engine over its own recreated pool, and closes both when it ends.
- A replica: a DSN (an engine is made for it) or an ``Engine`` the caller made (closed by
  the caller).

Every check runs through :meth:`CheckConnections.run` as a function of a sync ``Connection``,
whatever the kind.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mrl_pg.tools.server import sqlalchemy_url

T = TypeVar("T")


class CheckConnections(Protocol):
    def run(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a connection checked out for it, given back afterwards."""

    def end_thread(self) -> None:
        """Called by each worker thread as it ends."""

    def close(self) -> None:
        """Close every connection, once every worker thread has ended."""


class SyncConnections:
    """Checks on a sync engine; disposed at close when the monitor made it."""

    def __init__(self, engine: Engine, owned: bool) -> None:
        self.engine = engine
        self._owned = owned

    def run(self, work: Callable[[Connection], T]) -> T:
        with self.engine.connect() as conn:
            return work(conn)

    def end_thread(self) -> None:
        pass

    def close(self) -> None:
        if self._owned:
            self.engine.dispose()


class AsyncConnections:
    """Checks beside an ``AsyncEngine``: one event loop and engine per worker thread."""

    def __init__(self, user_engine: AsyncEngine) -> None:
        self._user = user_engine.sync_engine
        self._local = threading.local()

    def run(self, work: Callable[[Connection], T]) -> T:
        loop, engine = self._thread_engine()
        return loop.run_until_complete(self._run(engine, work))

    @staticmethod
    async def _run(engine: AsyncEngine, work: Callable[[Connection], T]) -> T:
        async with engine.connect() as conn:
            return await conn.run_sync(work)

    def _thread_engine(self) -> tuple[asyncio.AbstractEventLoop, AsyncEngine]:
        made: tuple[asyncio.AbstractEventLoop, AsyncEngine] | None = getattr(
            self._local, "made", None
        )
        if made is None:
            engine = AsyncEngine(like(self._user))
            made = self._local.made = (asyncio.new_event_loop(), engine)
        return made

    def end_thread(self) -> None:
        made = getattr(self._local, "made", None)
        if made is None:
            return
        loop, engine = made
        try:
            loop.run_until_complete(engine.dispose())
        finally:
            loop.close()

    def close(self) -> None:
        pass


def like(engine: Engine) -> Engine:
    """A new engine with a pool like ``engine``'s (same connect arguments and handlers, same
    size), on the same dialect, with none of ``engine``'s own event listeners."""
    return Engine(engine.pool.recreate(), engine.dialect, engine.url)


def check_connections(
    user_engine: Engine | AsyncEngine, replica: str | Engine | None, workers: int
) -> CheckConnections:
    """The connections checks of searches on ``user_engine`` run on."""
    if isinstance(replica, Engine):
        return SyncConnections(replica, owned=False)
    if isinstance(replica, str):
        engine = create_engine(
            sqlalchemy_url(replica), pool_size=workers, max_overflow=0, pool_pre_ping=True
        )
        return SyncConnections(engine, owned=True)
    if isinstance(user_engine, AsyncEngine):
        return AsyncConnections(user_engine)
    return SyncConnections(like(user_engine), owned=True)


def sync_engine_of(engine: Any) -> Engine | None:
    """The sync ``Engine`` behind ``engine`` (itself, or an ``AsyncEngine``'s), else None."""
    if isinstance(engine, AsyncEngine):
        return engine.sync_engine
    return engine if isinstance(engine, Engine) else None
