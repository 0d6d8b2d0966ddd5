"""One recall check: the sampled search run again, and the exact search beside it, in one
snapshot of the database.

The check never reads the rows the user's search returned. It runs, on a connection of the
monitor's own, in one ``REPEATABLE READ`` read-only transaction:

1. the search's own approximate statement (the same prefix stages, candidates and pgvector
   settings, the same filters), selecting the primary key of the searched rows;
2. the exact search: the same filters, ``ORDER BY`` the full-vector distance, ``LIMIT k``,
   with ``enable_indexscan`` off so that no index (a full-dimension HNSW index, say) answers
   approximately;

both under ``statement_timeout``. The transaction's snapshot is taken by its first statement,
so both searches see the same rows, whatever is written meanwhile: a row inserted between the
user's search and the check cannot count as a miss. recall@k is the share of the exact top k
(by primary key) that the approximate search found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Select, bindparam, cast, func, select
from sqlalchemy.engine import Connection

from mrl_pg.search.query_vector import QueryVectorType, prepare_connection
from mrl_pg.search.statement import (
    QUERY_PARAM,
    SearchRequest,
    plan_search,
    row_count,
)

_KEY_LABEL = "mrl_check_key_{}"
_SEGMENT_LABEL = "mrl_check_segment"


@dataclass(frozen=True)
class SampledSearch:
    """A search picked for a check, as taken in the searching thread: what ``mrl_search`` was
    asked, a copy of the query vector, the parameters the statement was executed with, the
    segment key the app passed (``mrl_pg_segment``), the ``schema_translate_map`` in effect,
    and when it ran."""

    request: SearchRequest
    query: npt.NDArray[np.float32]
    params: dict[str, Any]
    segment: str | None
    schema_translate_map: Mapping[str | None, str | None] | None
    at: datetime


@dataclass(frozen=True)
class CheckStatements:
    """The two statements of one check, and what names its figures.

    Both select the primary key of the searched table (``key_width`` columns) first; the exact
    one also selects the segment column when ``segmented``."""

    table: str
    prefix: str
    k: int
    approximate: Select[Any]
    exact: Select[Any]
    key_width: int
    segmented: bool


@dataclass(frozen=True)
class CheckOutcome:
    """What one check found: ``expected`` rows in the exact top k (fewer than k when the
    filters keep fewer rows), ``found`` of them also returned by the approximate search, and
    the segment of the search (None when it has none)."""

    found: int
    expected: int
    segment: str | None

    @property
    def recall(self) -> float:
        return self.found / self.expected


def check_statements(sample: SampledSearch, segment_column: str | None) -> CheckStatements | None:
    """The statements that check ``sample``; None when its table has no primary key, which
    the check needs to tell rows apart. The segment column is selected when the searched
    table has it."""
    request = sample.request
    target = request.target
    base: Select[Any] = target if isinstance(target, Select) else select(target)
    plan = plan_search(base, sample.query, request.options)
    first = plan.stages[0]
    searched = first.full_column.table  # the table, or the alias the select searches it through
    keys = [
        searched.c[column.key].label(_KEY_LABEL.format(i))
        for i, column in enumerate(first.table.primary_key.columns)
    ]
    if not keys:
        return None
    labels = [key.name for key in keys]

    with_keys = plan_search(base.add_columns(*keys), sample.query, request.options)
    key_columns = [c for c in with_keys.columns if getattr(c, "name", None) in labels]
    approximate = with_keys.select().with_only_columns(*key_columns).params(request.params)

    exact_columns: list[Any] = list(keys)
    segment = None if segment_column is None else searched.c.get(segment_column)
    if segment is not None:
        exact_columns.append(segment.label(_SEGMENT_LABEL))
    full = first.spec.full
    query = cast(bindparam(QUERY_PARAM, sample.query, type_=QueryVectorType(full)),
                 full.sql_type())
    exact = (
        base.with_only_columns(*exact_columns, maintain_column_froms=True)
        .order_by(plan.stages[-1].spec.full_distance(first.full_column, query))
        .limit(row_count(plan.k))
        .params(request.params)
    )
    return CheckStatements(
        table=first.table.fullname,
        prefix=",".join(stage.name for stage in plan.stages),
        k=plan.k,
        approximate=approximate,
        exact=exact,
        key_width=len(keys),
        segmented=segment is not None,
    )


def run_check(
    conn: Connection, sample: SampledSearch, statements: CheckStatements, timeout_ms: int
) -> CheckOutcome | None:
    """Run both statements in one snapshot on ``conn``; None when the exact search finds no
    row (the filters keep none), which leaves nothing to measure."""
    options: dict[str, Any] = {"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
    if sample.schema_translate_map:
        options["schema_translate_map"] = sample.schema_translate_map
    conn = conn.execution_options(**options)
    prepare_connection(conn)
    width = statements.key_width
    with conn.begin():
        conn.execute(select(func.set_config("statement_timeout", str(timeout_ms), True)))
        found = {tuple(row) for row in conn.execute(statements.approximate, sample.params)}
        conn.execute(select(func.set_config("enable_indexscan", "off", True)))
        exact = conn.execute(statements.exact, sample.params).all()
    if not exact:
        return None
    segment = sample.segment
    if segment is None and statements.segmented:
        segment = _most_common(row[width] for row in exact)
    hits = sum(1 for row in exact if tuple(row[:width]) in found)
    return CheckOutcome(found=hits, expected=len(exact), segment=segment)


def _most_common(values: Any) -> str | None:
    """The value most of the exact top k share (the nearest one's on a tie), as text."""
    value = Counter(values).most_common(1)[0][0]
    return None if value is None else str(value)
