"""A bounded queue of pending checks and the worker threads that take from it.

The searching thread only ever offers an item: ``offer`` never blocks and refuses when the
queue is full (the caller counts a drop). ``workers`` threads take items one at a time, so at
most that many checks run at once.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class CheckQueue(Generic[T]):
    """Pending items, the count of items being worked on, and a closed flag."""

    def __init__(self, capacity: int) -> None:
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._running = 0
        self._closed = False
        self._changed = threading.Condition()

    def offer(self, item: T) -> bool:
        """Queue ``item``; False when the queue is full or closed."""
        with self._changed:
            if self._closed or len(self._items) >= self._capacity:
                return False
            self._items.append(item)
            self._changed.notify()
            return True

    def take(self) -> T | None:
        """The next item, waiting for one; None once the queue is closed and empty."""
        with self._changed:
            while not self._items and not self._closed:
                self._changed.wait()
            if not self._items:
                return None
            self._running += 1
            return self._items.popleft()

    def done(self) -> None:
        """The item last taken by this thread is finished."""
        with self._changed:
            self._running -= 1
            self._changed.notify_all()

    @property
    def pending(self) -> int:
        """Items queued or being worked on."""
        with self._changed:
            return len(self._items) + self._running

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until nothing is queued or running; False if ``timeout`` seconds pass first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._items and not self._running, timeout
            )

    def close(self, drop: bool) -> int:
        """Refuse new items; with ``drop``, forget the queued ones. Returns how many were
        forgotten. Workers finish what is queued (unless dropped), then ``take`` returns
        None."""
        with self._changed:
            self._closed = True
            dropped = len(self._items) if drop else 0
            if drop:
                self._items.clear()
            self._changed.notify_all()
            return dropped


def start_workers(
    queue: CheckQueue[T], count: int, work: Callable[[T], None], on_exit: Callable[[], None]
) -> list[threading.Thread]:
    """``count`` daemon threads running ``work`` on each item of ``queue`` until it is closed
    and empty, then ``on_exit``. ``work`` must not raise."""

    def loop() -> None:
        try:
            while (item := queue.take()) is not None:
                try:
                    work(item)
                finally:
                    queue.done()
        finally:
            on_exit()

    threads = [
        threading.Thread(target=loop, name=f"mrl_pg-recall-check-{i}", daemon=True)
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    return threads


def join_all(threads: list[threading.Thread], timeout: float | None) -> bool:
    """Wait for ``threads`` to end, ``timeout`` seconds in all; whether they all did."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in threads:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        thread.join(left)
    return not any(thread.is_alive() for thread in threads)
