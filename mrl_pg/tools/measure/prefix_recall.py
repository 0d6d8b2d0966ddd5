"""Two-stage recall computed exactly in numpy: the ``c`` nearest rows by the prefix, reranked
by the full distance, against the true ``k`` nearest.

This is what the two-stage search returns when its prefix index is exact, so it isolates what
truncating the vectors costs; an HNSW index can only lose a little more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mrl_pg.prefix.spec import Distance
from mrl_pg.tools.synthetic import Matrix, exact_distances

#: Queries compared with all vectors at once; bounds memory to block x rows float64s.
QUERY_BLOCK = 64


@dataclass(frozen=True)
class PrefixRecall:
    """Per-query recall@k (queries x candidate counts) of one prefix size."""

    dims: int
    candidates: list[int]
    per_query: npt.NDArray[np.float64]

    def mean(self) -> list[float]:
        return [float(v) for v in self.per_query.mean(axis=0)]

    def worst(self, fraction: float) -> list[float]:
        """Mean recall of the ``fraction`` of queries that fare worst (at least one query)."""
        count = max(1, math.ceil(fraction * len(self.per_query)))
        lowest = np.sort(self.per_query, axis=0)[:count]
        return [float(v) for v in lowest.mean(axis=0)]


def prefix_recall(
    vectors: Matrix,
    queries: Matrix,
    prefixes: Sequence[int],
    candidates: Sequence[int],
    k: int,
    distance: Distance,
) -> list[PrefixRecall]:
    """Per-query recall@k of every prefix size and candidate count."""
    counts = sorted(candidates)
    pool = min(counts[-1], len(vectors))
    results = {dims: np.empty((len(queries), len(counts))) for dims in prefixes}
    data = vectors.astype(np.float64)
    for start in range(0, len(queries), QUERY_BLOCK):
        block = queries[start : start + QUERY_BLOCK].astype(np.float64)
        full = exact_distances(data, block, distance)
        truth = _nearest(full, k)
        for dims in prefixes:
            coarse = exact_distances(data[:, :dims], block[:, :dims], _prefix_distance(distance))
            shortlist = _nearest(coarse, pool)
            for j, count in enumerate(counts):
                chosen = shortlist[:, :count]
                rerank = np.take_along_axis(full, chosen, axis=1)
                best = np.take_along_axis(chosen, _nearest(rerank, min(k, count)), axis=1)
                hits = [len(set(b) & set(t)) for b, t in zip(best, truth, strict=True)]
                results[dims][start : start + len(block), j] = np.array(hits) / k
    return [PrefixRecall(dims, counts, results[dims]) for dims in prefixes]


def _prefix_distance(distance: Distance) -> Distance:
    """The prefix ranks by cosine for inner product: its prefix column is L2-normalised."""
    return Distance.COSINE if distance is Distance.INNER_PRODUCT else distance


def _nearest(scores: npt.NDArray[np.float64], count: int) -> npt.NDArray[np.int64]:
    """Column indices of each row's ``count`` smallest scores, smallest first."""
    top = np.argpartition(scores, count - 1, axis=1)[:, :count]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1, kind="stable")
    nearest: npt.NDArray[np.int64] = np.take_along_axis(top, order, axis=1)
    return nearest
