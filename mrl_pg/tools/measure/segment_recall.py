"""Two-stage recall per segment: the rows of a table grouped by a column's value (a tenant, a
language, a category), queries held out of each group, recall computed exactly in numpy as
:mod:`mrl_pg.tools.measure.prefix_recall` does.

Two scopes:

- ``within`` (the default): each query searches the rows of its own segment, as a search
  filtered on the column does (one tenant's documents);
- ``across``: each query searches every row, and its recall counts for its own segment (the
  French queries of a table searched as a whole).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mrl_pg.prefix.spec import Distance
from mrl_pg.tools.measure.inputs import SegmentedRows
from mrl_pg.tools.measure.prefix_recall import PrefixRecall, prefix_recall


@dataclass(frozen=True)
class SegmentRecall:
    """Per-query recall of one segment's queries: one :class:`PrefixRecall` per prefix
    size; ``rows`` is how many rows its queries searched, ``query_rows`` which rows of the
    data were held out as its queries."""

    segment: str
    rows: int
    figures: list[PrefixRecall]
    query_rows: npt.NDArray[np.int64]

    @property
    def queries(self) -> int:
        return len(self.figures[0].per_query)

    def recall_at(self, dims: int, candidates: int) -> float:
        figure = next(f for f in self.figures if f.dims == dims)
        return figure.mean()[figure.candidates.index(candidates)]


def segment_recall(
    data: SegmentedRows,
    prefixes: list[int],
    candidates: list[int],
    k: int,
    distance: Distance,
    query_count: int,
    seed: int,
    across: bool,
) -> tuple[list[SegmentRecall], list[str]]:
    """Recall of every segment with enough rows (up to ``query_count`` queries held out of
    each, leaving at least ``k`` rows searched), and the segments too small to measure."""
    labels = np.array(data.segments, dtype=object)
    rng = np.random.default_rng(seed)
    held: dict[str, npt.NDArray[np.int64]] = {}
    too_small = []
    for segment in sorted(set(data.segments)):
        rows = np.flatnonzero(labels == segment)
        count = min(query_count, len(rows) - k)
        if count < 1:
            too_small.append(segment)
            continue
        held[segment] = rng.choice(rows, size=count, replace=False)
    is_query = np.zeros(len(labels), dtype=bool)
    for picked in held.values():
        is_query[picked] = True

    results = []
    if across:
        searched = data.vectors[~is_query]
        order = list(held)
        every = np.concatenate([held[s] for s in order]) if order else np.array([], int)
        if len(every):
            pooled = prefix_recall(searched, data.vectors[every], prefixes, candidates, k,
                                   distance)
            start = 0
            for segment in order:
                stop = start + len(held[segment])
                results.append(SegmentRecall(segment, len(searched), [
                    PrefixRecall(f.dims, f.candidates, f.per_query[start:stop]) for f in pooled
                ], held[segment]))
                start = stop
    else:
        for segment, picked in held.items():
            rows = np.flatnonzero((labels == segment) & ~is_query)
            figures = prefix_recall(data.vectors[rows], data.vectors[picked], prefixes,
                                    candidates, k, distance)
            results.append(SegmentRecall(segment, len(rows), figures, picked))
    return results, too_small


def pooled(segments: list[SegmentRecall]) -> list[PrefixRecall]:
    """Every segment's queries together, per prefix size."""
    first = segments[0].figures
    return [
        PrefixRecall(
            figure.dims,
            figure.candidates,
            np.concatenate([s.figures[i].per_query for s in segments]),
        )
        for i, figure in enumerate(first)
    ]
