"""The recall monitor: a sample of live searches checked against exact ones, off the search
path.

Attached to an engine, the monitor is told of every search that engine runs (by
:class:`~mrl_pg.search.search_select.SearchSelect`, after the search returned its result). An
unsampled search costs a dictionary look-up and one random draw. A sampled one is copied
(what ``mrl_search`` was asked, the query vector, the parameters, the segment key) into a
bounded queue, or counted as dropped when the queue is full; worker threads check it on
connections of the monitor's own (:mod:`mrl_pg.monitor.connections`,
:mod:`mrl_pg.monitor.check`) and record its recall (:mod:`mrl_pg.monitor.figures`). Nothing
the monitor does raises into, waits on, or changes the user's search: its errors are logged
(logger ``mrl_pg.monitor``) and counted.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mrl_pg.errors import MonitorConfigError
from mrl_pg.monitor.check import CheckOutcome, SampledSearch, check_statements, run_check
from mrl_pg.monitor.connections import check_connections, sync_engine_of
from mrl_pg.monitor.figures import CheckedQuery, Figures, MonitorSnapshot
from mrl_pg.monitor.prometheus import recall_gauges
from mrl_pg.monitor.workers import CheckQueue, join_all, start_workers
from mrl_pg.search.search_select import SEARCH_OBSERVERS, SearchSelect
from mrl_pg.search.statement import SearchRequest

logger = logging.getLogger("mrl_pg.monitor")

#: The execution option naming a search's segment: ``.execution_options(mrl_pg_segment="fr")``
#: on the statement, the connection or the ``execute()`` call.
SEGMENT_OPTION = "mrl_pg_segment"

_OUTCOMES = ("sampled", "checked", "skipped", "failed", "dropped")


class RecallMonitor:
    """Rolling recall@k of live searches, per table and prefix and per segment.

    ::

        monitor = RecallMonitor.attach(engine, sample_rate=0.01, segment_column="tenant")
        ...
        snapshot = monitor.snapshot()   # figures, worst recent queries, counts
        monitor.close()                 # at shutdown

    Make one with :meth:`attach`; see there for the options.
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        sample_rate: float,
        *,
        threshold: float,
        window: int,
        min_checks: int,
        segment_column: str | None,
        max_concurrent: int,
        max_pending: int,
        statement_timeout: float,
        replica: str | Engine | None,
        keep_raw_vectors: bool,
        worst: int,
        seed: int | None,
        metrics: bool,
    ) -> None:
        sync_engine = sync_engine_of(engine)
        if sync_engine is None:
            raise MonitorConfigError(
                f"a recall monitor attaches to an Engine or an AsyncEngine, got {engine!r}"
            )
        _check_options(sample_rate, threshold, window, min_checks, segment_column,
                       max_concurrent, max_pending, statement_timeout, replica, worst)
        self._dialect = sync_engine.dialect
        if self._dialect in SEARCH_OBSERVERS:
            raise MonitorConfigError(
                "this engine already has a recall monitor; close it before attaching another"
            )
        self.sample_rate = float(sample_rate)
        self.threshold = float(threshold)
        self._draw = random.Random(seed).random
        self._segment_column = segment_column
        self._timeout_ms = max(1, round(statement_timeout * 1000))
        self._keep_raw_vectors = keep_raw_vectors
        self._gauges = recall_gauges() if metrics else None
        self._figures = Figures(window, min_checks, threshold, worst, self._gauges)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(_OUTCOMES, 0)
        self._last_error: str | None = None
        self._failing = False
        self._noted: set[str] = set()
        self._closed = False
        self._connections = check_connections(engine, replica, max_concurrent)
        self._queue: CheckQueue[SampledSearch] = CheckQueue(max_pending)
        self._live_workers = max_concurrent
        self._workers = start_workers(self._queue, max_concurrent, self._check,
                                      self._worker_ended)
        SEARCH_OBSERVERS[self._dialect] = self._observe

    @classmethod
    def attach(
        cls,
        engine: Engine | AsyncEngine,
        sample_rate: float = 0.01,
        *,
        threshold: float = 0.9,
        window: int = 200,
        min_checks: int = 20,
        segment_column: str | None = None,
        max_concurrent: int = 2,
        max_pending: int = 100,
        statement_timeout: float = 5.0,
        replica: str | Engine | None = None,
        keep_raw_vectors: bool = False,
        worst: int = 20,
        seed: int | None = None,
        metrics: bool = True,
    ) -> RecallMonitor:
        """Start checking a share ``sample_rate`` (0 to 1) of the searches run on ``engine``
        (a sync ``Engine`` or an ``AsyncEngine``, and every ``execution_options()`` copy of
        it). One monitor per engine.

        - ``threshold``: a window whose rolling recall@k falls below it logs a warning (once
          per crossing) and is flagged in :meth:`snapshot`.
        - ``window``: checks per rolling figure (the latest ones of a table and prefix, or of
          a segment); ``min_checks``: checks a figure needs before it can warn.
        - ``segment_column``: a column of the searched table whose value names a search's
          segment: the value most of the exact top k rows share (for a search filtered on
          that column, the filter's value). A search's ``mrl_pg_segment`` execution option,
          when given, names its segment instead.
        - ``max_concurrent``: checks running at once (worker threads, and connections of
          the monitor's own); ``max_pending``: sampled searches waiting, beyond which
          further ones are dropped (and counted).
        - ``statement_timeout``: seconds each statement of a check may run.
        - ``replica``: where checks run: a DSN or an ``Engine`` (a read replica, say); by
          default new connections made like ``engine``'s, in a pool of the monitor's own.
        - ``keep_raw_vectors``: keep the query vectors of the worst queries, not only their
          hash; ``worst``: how many worst queries :meth:`snapshot` lists.
        - ``seed``: seeds the sampling draws, for reproducible runs.
        - ``metrics``: export Prometheus gauges when ``prometheus_client`` is installed.

        Options are checked before anything starts: a bad one raises
        :class:`~mrl_pg.errors.MonitorConfigError`.
        """
        return cls(
            engine,
            sample_rate,
            threshold=threshold,
            window=window,
            min_checks=min_checks,
            segment_column=segment_column,
            max_concurrent=max_concurrent,
            max_pending=max_pending,
            statement_timeout=statement_timeout,
            replica=replica,
            keep_raw_vectors=keep_raw_vectors,
            worst=worst,
            seed=seed,
            metrics=metrics,
        )

    # -- in the searching thread ----------------------------------------------------------

    def _observe(
        self,
        search: SearchSelect,
        connection: Connection,
        distilled_params: Any,
        execution_options: Any,
    ) -> None:
        request = search.search_request
        if request is None or self._draw() >= self.sample_rate:
            return  # a statement not made by mrl_search (a check's own), or not sampled
        try:
            self._sample(request, search, connection, distilled_params, execution_options)
        except Exception as exc:  # the user's search has succeeded; never fail it
            self._failed(exc)

    def _sample(
        self,
        request: SearchRequest,
        search: SearchSelect,
        connection: Connection,
        distilled_params: Any,
        execution_options: Any,
    ) -> None:
        options: dict[str, Any] = {
            **search.get_execution_options(),
            **connection.get_execution_options(),
            **(execution_options or {}),
        }
        segment = options.get(SEGMENT_OPTION)
        sample = SampledSearch(
            request=request,
            query=np.array(request.query, dtype=np.float32, copy=True),
            params=dict(distilled_params[0]) if distilled_params else {},
            segment=None if segment is None else str(segment),
            schema_translate_map=options.get("schema_translate_map"),
            at=datetime.now(timezone.utc),
        )
        self._count("sampled")
        if not self._queue.offer(sample):
            self._count("dropped")

    # -- in a worker thread ---------------------------------------------------------------

    def _check(self, sample: SampledSearch) -> None:
        try:
            statements = check_statements(sample, self._segment_column)
            if statements is None:
                self._note(f"searches of {sample.request.target!r} are not checked: its table "
                           "has no primary key to tell rows apart")
                self._count("skipped")
                return
            if self._segment_column is not None and not statements.segmented:
                self._note(f"table {statements.table} has no column {self._segment_column!r}: "
                           "its searches are not segmented")

            def check(conn: Connection) -> CheckOutcome | None:
                return run_check(conn, sample, statements, self._timeout_ms)

            outcome = self._connections.run(check)
        except Exception as exc:
            self._failed(exc)
            return
        if outcome is None:
            self._count("skipped")
            return
        self._figures.record(
            CheckedQuery(
                at=sample.at,
                table=statements.table,
                prefix=statements.prefix,
                segment=outcome.segment,
                k=statements.k,
                recall=outcome.recall,
                query_hash=query_hash(sample.query),
                query_vector=tuple(sample.query.tolist()) if self._keep_raw_vectors else None,
            )
        )
        with self._lock:
            if self._failing:
                logger.info("recall checks succeed again")
            self._failing = False
        self._count("checked")

    def _worker_ended(self) -> None:
        """A worker thread ends (the monitor is closed): it closes its connections, and the
        last one closes the monitor's pool."""
        self._connections.end_thread()
        with self._lock:
            self._live_workers -= 1
            last = self._live_workers == 0
        if last:
            self._connections.close()

    def _failed(self, exc: Exception) -> None:
        """Count and log a failure: the first of a run of failures at WARNING, the others
        at DEBUG, so that a replica that is down does not flood the log."""
        message = f"{type(exc).__name__}: {exc}".strip()
        with self._lock:
            first = not self._failing
            self._failing = True
            self._last_error = message
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "a recall check failed (the search itself was not affected): %s", message,
        )
        self._count("failed")

    def _note(self, message: str) -> None:
        with self._lock:
            if message in self._noted:
                return
            self._noted.add(message)
        logger.warning(message)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1
        if self._gauges is not None:
            self._gauges.count(outcome)

    # -- for the application --------------------------------------------------------------

    def snapshot(self) -> MonitorSnapshot:
        """The figures now (see :class:`~mrl_pg.monitor.figures.MonitorSnapshot`)."""
        tables, segments, worst = self._figures.figures()
        pending = self._queue.pending
        with self._lock:
            counts = dict(self._counts)
            last_error = self._last_error
        return MonitorSnapshot(
            sample_rate=self.sample_rate,
            threshold=self.threshold,
            sampled=counts["sampled"],
            checked=counts["checked"],
            skipped=counts["skipped"],
            failed=counts["failed"],
            dropped=counts["dropped"],
            pending=pending,
            last_error=last_error,
            tables=tables,
            segments=segments,
            worst=worst,
        )

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no check is queued or running; False if ``timeout`` seconds pass
        first. For tests and scripts: production code has no need to wait for checks."""
        return self._queue.wait_idle(timeout)

    def close(self, timeout: float | None = 30.0, drain: bool = True) -> MonitorSnapshot:
        """Stop sampling at once, then finish: with ``drain``, the checks already queued run
        (each bounded by ``statement_timeout``); without, they are dropped (and counted) and
        only the running ones finish. Waits at most ``timeout`` seconds for the worker
        threads; checks still running then are left to end on their own (logged); the last
        worker thread to end closes the monitor's connections. Returns the snapshot at the
        end of the wait. Closing twice is harmless."""
        with self._lock:
            closing = not self._closed
            self._closed = True
        if closing:
            if SEARCH_OBSERVERS.get(self._dialect) == self._observe:
                del SEARCH_OBSERVERS[self._dialect]
            dropped = self._queue.close(drop=not drain)
            with self._lock:
                self._counts["dropped"] += dropped
            if not join_all(self._workers, timeout) and self._queue.pending:
                logger.warning(
                    "%d recall checks still running %s s after close(); left to end on "
                    "their own", self._queue.pending, timeout,
                )
            self._figures.forget_gauges()
        return self.snapshot()

    def __enter__(self) -> RecallMonitor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def query_hash(vector: np.ndarray[Any, Any]) -> str:
    """16 hex digits naming a query vector without keeping it."""
    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def _check_options(
    sample_rate: float,
    threshold: float,
    window: int,
    min_checks: int,
    segment_column: str | None,
    max_concurrent: int,
    max_pending: int,
    statement_timeout: float,
    replica: str | Engine | None,
    worst: int,
) -> None:
    def number_in(name: str, value: Any, low: float, high: float, low_open: bool) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
            value
        ) and (low < value if low_open else low <= value) and value <= high
        if not ok:
            bracket = "(" if low_open else "["
            raise MonitorConfigError(f"{name} must be a number in {bracket}{low:g}, {high:g}], "
                                     f"got {value!r}")

    def count_at_least(name: str, value: Any, low: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MonitorConfigError(f"{name} must be an integer >= {low}, got {value!r}")

    number_in("sample_rate", sample_rate, 0, 1, low_open=False)
    number_in("threshold", threshold, 0, 1, low_open=True)
    count_at_least("window", window, 1)
    count_at_least("min_checks", min_checks, 1)
    if min_checks > window:
        raise MonitorConfigError(
            f"min_checks ({min_checks}) must not exceed window ({window}): no figure could warn"
        )
    count_at_least("max_concurrent", max_concurrent, 1)
    count_at_least("max_pending", max_pending, 1)
    count_at_least("worst", worst, 0)
    number_in("statement_timeout", statement_timeout, 0, 86400, low_open=True)
    if segment_column is not None and (not isinstance(segment_column, str) or not segment_column):
        raise MonitorConfigError(f"segment_column must be a column name, got {segment_column!r}")
    if replica is not None and not isinstance(replica, (str, Engine)):
        raise MonitorConfigError(
            f"replica must be a DSN or a sync Engine, got {replica!r}"
        )

