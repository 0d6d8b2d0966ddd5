"""Running a search over every query, one client, and summing up speed and recall.

A bench runs every method/setting once per repeat; a :class:`Result` holds the median of the
repeats' queries/s and latency percentiles (recall is the same in every repeat: each setting
returns the same rows, so it is taken from the first).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from mrl_pg.tools.measure.progress import tracked
from mrl_pg.tools.synthetic import Matrix, recall_at_k

#: Queries run untimed first, to warm the cache and let the driver prepare its statements.
WARMUP_QUERIES = 20


@dataclass(frozen=True)
class Result:
    """One measured configuration; its fields are the bench's JSON keys."""

    method: str
    prefix_dims: int | None
    storage: str | None
    candidates: int | None
    ef_search: int | None
    k: int
    recall: float
    qps: float
    p50_ms: float
    p99_ms: float
    index_bytes: int
    build_s: float
    #: Median server-side execution time (``EXPLAIN ANALYZE``) over a sample of the queries.
    server_ms: float
    #: Queries/s of every repeat, in order (``qps`` is their median).
    qps_repeats: tuple[float, ...]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Timing:
    found: list[list[int]]
    latencies_ms: npt.NDArray[np.float64]
    seconds: float


def time_queries(
    search: Callable[[npt.NDArray[np.float32]], list[int]], queries: Matrix, description: str
) -> Timing:
    """Run ``search`` on every query after a warm-up pass; latencies in milliseconds."""
    for query in queries[:WARMUP_QUERIES]:
        search(query)
    found: list[list[int]] = []
    latencies = np.empty(len(queries), dtype=np.float64)
    started = time.perf_counter()
    for i, query in enumerate(tracked(queries, description, total=len(queries))):
        before = time.perf_counter()
        found.append(search(query))
        latencies[i] = (time.perf_counter() - before) * 1000.0
    return Timing(found, latencies, time.perf_counter() - started)


def summarise(
    timings: Sequence[Timing],
    truth: npt.NDArray[np.int64],
    *,
    method: str,
    k: int,
    server_ms: float,
    prefix_dims: int | None = None,
    storage: str | None = None,
    candidates: int | None = None,
    ef_search: int | None = None,
    index_bytes: int = 0,
    build_s: float = 0.0,
) -> Result:
    """The medians over ``timings`` (one per repeat) of one method at one setting."""
    qps = tuple(len(t.found) / t.seconds for t in timings)
    return Result(
        method=method,
        prefix_dims=prefix_dims,
        storage=storage,
        candidates=candidates,
        ef_search=ef_search,
        k=k,
        recall=recall_at_k(timings[0].found, truth),
        qps=statistics.median(qps),
        p50_ms=statistics.median(float(np.percentile(t.latencies_ms, 50)) for t in timings),
        p99_ms=statistics.median(float(np.percentile(t.latencies_ms, 99)) for t in timings),
        index_bytes=index_bytes,
        build_s=build_s,
        server_ms=server_ms,
        qps_repeats=qps,
    )
