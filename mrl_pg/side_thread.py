"""Running a watcher beside a long statement: a thread polls until the statement is done."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def in_background(watch: Callable[[threading.Event], None], name: str) -> Iterator[None]:
    """Run ``watch(stop)`` in a thread while the block runs; ``stop`` is set when the block
    ends, and the block's exit waits for ``watch`` to return."""
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(stop,), name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
