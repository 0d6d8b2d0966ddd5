"""The monitor's figures: rolling recall per table and prefix and per segment, the worst
recent queries, counts, and the warning when a rolling recall falls below the threshold.

A window is the last ``window`` checks of one table and prefix (all its searches), or of one
segment of them. Its recall is the mean recall@k of those checks, each at its own search's k.
A window warns (logger ``mrl_pg.monitor``, level WARNING) when its recall first falls below the
threshold with at least ``min_checks`` checks in it, and not again until it has risen back to
``RECOVERY_MARGIN`` above the threshold (logged at INFO): once per crossing, not once per
check, and a recall hovering at the threshold does not warn again at every other check.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from mrl_pg.monitor.prometheus import RecallGauges

logger = logging.getLogger("mrl_pg.monitor")

#: How far above the threshold a flagged window's recall must rise to clear the flag.
RECOVERY_MARGIN = 0.02


@dataclass(frozen=True)
class RecallFigure:
    """Rolling recall of one table and prefix (``segment`` None: all its searches) or of one
    segment of them: the mean recall@k of the last ``checks`` checks, the lowest of them, and
    whether the window is flagged: its mean fell below the monitor's threshold (with at least
    ``min_checks`` checks) and has not risen back to the threshold plus ``RECOVERY_MARGIN``."""

    table: str
    prefix: str
    segment: str | None
    recall: float
    checks: int
    lowest: float
    below_threshold: bool


@dataclass(frozen=True)
class CheckedQuery:
    """One checked search: when it ran, what it searched, its recall@k, and a hash of its
    query vector (the first 16 hex digits of BLAKE2b over its float32 bytes); the vector
    itself only when the monitor keeps raw vectors."""

    at: datetime
    table: str
    prefix: str
    segment: str | None
    k: int
    recall: float
    query_hash: str
    query_vector: tuple[float, ...] | None


@dataclass(frozen=True)
class MonitorSnapshot:
    """The monitor's figures at one moment.

    Every sampled search ends as exactly one of ``checked`` (a recall figure), ``skipped``
    (its table has no primary key, or the exact search found no row), ``failed`` (an error,
    logged; ``last_error`` says the latest), ``dropped`` (the queue was full, or the monitor
    was closed without draining), or is still ``pending`` (queued or running).
    ``tables`` has one figure per table and prefix; ``segments`` one per segment, lowest
    recall first; ``worst`` the lowest-recall checks still in a window, lowest first."""

    sample_rate: float
    threshold: float
    sampled: int
    checked: int
    skipped: int
    failed: int
    dropped: int
    pending: int
    last_error: str | None
    tables: tuple[RecallFigure, ...]
    segments: tuple[RecallFigure, ...]
    worst: tuple[CheckedQuery, ...]


WindowKey = tuple[str, str, str | None]


class _Window:
    """The last ``size`` checks of one key, with their running recall sum."""

    __slots__ = ("below", "checks", "total")

    def __init__(self, size: int) -> None:
        self.checks: deque[CheckedQuery] = deque(maxlen=size)
        self.total = 0.0
        self.below = False

    def add(self, check: CheckedQuery) -> None:
        if len(self.checks) == self.checks.maxlen:
            self.total -= self.checks[0].recall
        self.checks.append(check)
        self.total += check.recall

    @property
    def recall(self) -> float:
        return self.total / len(self.checks)


class Figures:
    """Thread-safe rolling figures; checks are recorded from the worker threads."""

    def __init__(
        self,
        window: int,
        min_checks: int,
        threshold: float,
        worst: int,
        gauges: RecallGauges | None,
    ) -> None:
        self._size = window
        self._min_checks = min_checks
        self._threshold = threshold
        self._worst = worst
        self._gauges = gauges
        self._lock = threading.Lock()
        self._windows: dict[WindowKey, _Window] = {}

    def record(self, check: CheckedQuery) -> None:
        """Add one check to its table's window and, if it has one, its segment's."""
        keys: list[WindowKey] = [(check.table, check.prefix, None)]
        if check.segment is not None:
            keys.append((check.table, check.prefix, check.segment))
        with self._lock:
            for key in keys:
                window = self._windows.get(key)
                if window is None:
                    window = self._windows[key] = _Window(self._size)
                window.add(check)
                self._watch(key, window)

    def _watch(self, key: WindowKey, window: _Window) -> None:
        recall = window.recall
        if self._gauges is not None:
            self._gauges.set_recall(key, recall)
        if len(window.checks) < self._min_checks:
            return
        if recall < self._threshold and not window.below:
            window.below = True
            logger.warning(
                "recall@k of %s is %.3f over its last %d checks, below the threshold %.3f; "
                "raise its candidates, use a larger prefix, or route it to the full index",
                describe(key), recall, len(window.checks), self._threshold,
            )
        elif window.below and recall >= min(self._threshold + RECOVERY_MARGIN, 1.0):
            window.below = False
            logger.info(
                "recall@k of %s is back to %.3f over its last %d checks (threshold %.3f)",
                describe(key), recall, len(window.checks), self._threshold,
            )

    def figures(self) -> tuple[tuple[RecallFigure, ...], tuple[RecallFigure, ...],
                               tuple[CheckedQuery, ...]]:
        """Per table and prefix, per segment (lowest first), and the worst checks."""
        with self._lock:
            windows = [(key, window.below, tuple(window.checks))
                       for key, window in self._windows.items()]
        tables: list[RecallFigure] = []
        segments: list[RecallFigure] = []
        held: dict[int, CheckedQuery] = {}
        for (table, prefix, segment), below, checks in windows:
            recall = sum(c.recall for c in checks) / len(checks)
            figure = RecallFigure(
                table=table,
                prefix=prefix,
                segment=segment,
                recall=recall,
                checks=len(checks),
                lowest=min(c.recall for c in checks),
                below_threshold=below,
            )
            (tables if segment is None else segments).append(figure)
            held.update((id(c), c) for c in checks)
        worst = sorted(held.values(), key=lambda c: (c.recall, c.at))[: self._worst]
        segments.sort(key=lambda f: (f.recall, f.table, f.prefix, str(f.segment)))
        return tuple(tables), tuple(segments), tuple(worst)

    def forget_gauges(self) -> None:
        """Remove this monitor's series from the Prometheus gauges."""
        if self._gauges is None:
            return
        with self._lock:
            for key in self._windows:
                self._gauges.remove(key)


def describe(key: WindowKey) -> str:
    table, prefix, segment = key
    where = f"{table} prefix {prefix}"
    return where if segment is None else f"{where}, segment {segment!r}"
