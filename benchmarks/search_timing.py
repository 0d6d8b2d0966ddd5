"""Timing searches for the benchmark scripts: every query of a set through ``mrl_search``,
on one autocommit SQLAlchemy connection, returning the ids found."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sqlalchemy import Engine, Table, select

from mrl_pg import mrl_search

#: Queries run once, untimed, before a method is measured: caches warm, plans made.
WARMUP = 50


def run_queries(
    engine: Engine, table: Table, queries: np.ndarray, options: dict[str, Any]
) -> tuple[float, list[list[int]]]:
    """Seconds for every query (``mrl_search(select(table.c.id), query, k=10, **options)``),
    and the ids each returned."""
    found: list[list[int]] = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        started = time.perf_counter()
        for query in queries:
            rows = conn.execute(mrl_search(select(table.c.id), query, k=10, **options)).all()
            found.append([row.id for row in rows])
        elapsed = time.perf_counter() - started
    return elapsed, found
