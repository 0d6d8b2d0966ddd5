"""How many candidates each stage keeps, and which pgvector settings a search statement makes.

Defaults follow published practice for rescoring (a few candidates per returned row, more for
coarser prefixes and for filtered searches) and pgvector's limits for ``hnsw.ef_search``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

from mrl_pg.errors import SearchParameterError
from mrl_pg.prefix.declare import Prefix
from mrl_pg.prefix.spec import Storage
from mrl_pg.search.hnsw_settings import Settings

#: Candidates per result row kept by a prefix stage, by storage: a coarser prefix needs more.
DEFAULT_OVERSAMPLE = {Storage.VECTOR: 4.0, Storage.HALFVEC: 4.0, Storage.BIT: 10.0}
#: Smallest candidate pool a stage uses by default, by storage.
MIN_CANDIDATES = {Storage.VECTOR: 40, Storage.HALFVEC: 40, Storage.BIT: 200}
#: A filter thins out the rows near the query, so the nearest matches lie farther away, where
#: a prefix ranks less sharply: a filtered first stage keeps at least this many candidates per
#: result row, and at least ``FILTERED_MIN_CANDIDATES``.
FILTERED_OVERSAMPLE = 10.0
FILTERED_MIN_CANDIDATES = 100
#: Iterative-scan limits of a filtered search, raised from pgvector's 20,000 tuples and 1 x
#: ``work_mem`` so that a filter keeping 0.1% of the rows still yields its candidates.
FILTERED_SCAN_SETTINGS = (("hnsw.max_scan_tuples", "100000"), ("hnsw.scan_mem_multiplier", "2"))
#: pgvector's bounds for ``hnsw.ef_search``, and its default.
EF_SEARCH_RANGE = (1, 1000)
DEFAULT_EF_SEARCH = 40
#: ``hnsw.ef_search`` per first-stage candidate by default. An HNSW scan at ef_search equal to
#: the candidate count misses a share of the prefix's own nearest rows; searching wider
#: recovers most of them for less than the cost of more candidates (docs/benchmarks.md,
#: "Default ef_search", has the measurements).
EF_SEARCH_PER_CANDIDATE = 2


class IterativeScan(str, Enum):
    """``hnsw.iterative_scan`` modes (pgvector >= 0.8)."""

    OFF = "off"
    STRICT_ORDER = "strict_order"
    RELAXED_ORDER = "relaxed_order"


def candidate_counts(
    stages: list[Prefix],
    k: int,
    candidates: int | Sequence[int] | None,
    oversample: float | None,
    filtered: bool,
) -> list[int]:
    if oversample is not None and (
        isinstance(oversample, bool) or not isinstance(oversample, (int, float))
        or not math.isfinite(oversample) or oversample < 1
    ):
        raise SearchParameterError(f"oversample must be a number >= 1, got {oversample!r}")
    if candidates is None:
        counts: list[int] = []
        following = k
        for position, stage in enumerate(reversed(stages)):
            storage = stage.spec.storage
            factor = oversample if oversample is not None and position == 0 else None
            factor = factor or DEFAULT_OVERSAMPLE[storage]
            least = MIN_CANDIDATES[storage]
            if filtered and oversample is None and position == len(stages) - 1:
                factor = max(factor, FILTERED_OVERSAMPLE)
                least = max(least, FILTERED_MIN_CANDIDATES)
            following = max(math.ceil(following * factor), least, following)
            counts.insert(0, following)
        return counts
    if oversample is not None:
        raise SearchParameterError("give candidates or oversample, not both")
    counts = [candidates] if isinstance(candidates, int) else list(candidates)
    if len(counts) != len(stages):
        raise SearchParameterError(
            f"{len(counts)} candidate counts for {len(stages)} prefix stages; give one per stage"
        )
    for count in counts:
        check_positive_int("candidates", count)
    for count, following in zip(counts, [*counts[1:], k], strict=True):
        if count < following:
            raise SearchParameterError(
                f"candidates ({count}) must be at least k ({k}) and at least the next stage's "
                f"count; got {counts} for k={k}"
            )
    return counts


def statement_settings(
    first_stage_candidates: int,
    filtered: bool,
    ef_search: int | None,
    iterative_scan: IterativeScan | str | None,
    max_scan_tuples: int | None,
) -> Settings:
    low, high = EF_SEARCH_RANGE
    if ef_search is None:
        ef_search = default_ef_search(first_stage_candidates)
    elif isinstance(ef_search, bool) or not isinstance(ef_search, int) or not (
        low <= ef_search <= high
    ):
        raise SearchParameterError(
            f"ef_search must be an integer in [{low}, {high}], got {ef_search!r}"
        )
    if iterative_scan is None:
        if filtered or first_stage_candidates > ef_search:
            iterative_scan = IterativeScan.RELAXED_ORDER
    else:
        try:
            iterative_scan = IterativeScan(iterative_scan)
        except ValueError:
            modes = ", ".join(m.value for m in IterativeScan)
            raise SearchParameterError(
                f"unknown iterative_scan {iterative_scan!r}; expected one of: {modes}"
            ) from None
    settings = [("hnsw.ef_search", str(ef_search))]
    if iterative_scan is not None:
        settings.append(("hnsw.iterative_scan", iterative_scan.value))
    if max_scan_tuples is not None:
        check_positive_int("max_scan_tuples", max_scan_tuples)
        settings.append(("hnsw.max_scan_tuples", str(max_scan_tuples)))
    elif filtered and iterative_scan not in (None, IterativeScan.OFF):
        settings.extend(FILTERED_SCAN_SETTINGS)
    return tuple(settings)


def default_ef_search(first_stage_candidates: int) -> int:
    """``hnsw.ef_search`` for a first stage keeping ``first_stage_candidates`` rows:
    ``EF_SEARCH_PER_CANDIDATE`` per candidate, at least pgvector's default of 40 and at most
    its limit of 1000 (past which an iterative scan yields the remaining candidates)."""
    wanted = math.ceil(first_stage_candidates * EF_SEARCH_PER_CANDIDATE)
    return min(max(wanted, DEFAULT_EF_SEARCH), EF_SEARCH_RANGE[1])


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SearchParameterError(f"{name} must be a positive integer, got {value!r}")
