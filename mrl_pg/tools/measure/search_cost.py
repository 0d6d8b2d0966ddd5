"""What a search costs, measured: ``mrl_search`` timed on a scratch copy over a ladder of
candidate counts and ``hnsw.ef_search`` values, and the fastest setting reaching a recall.

``mrl-pg evaluate --measure`` runs this after its exact numpy step. Only what that step says
can reach the target is measured: a prefix size whose exact-ranking recall (an upper bound of
what its HNSW index gives) reaches the target at some candidate count, and from the smallest
such counts. Each (prefix size, storage) gets its HNSW index on the scratch table, built after
the load, and every (candidates, ef_search) of the ladder is run over every query through the
public ``mrl_search``, one client, after a warm-up, in rounds.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, select

from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.search.defaults import EF_SEARCH_RANGE, default_ef_search
from mrl_pg.search.statement import mrl_search
from mrl_pg.tools.measure.inputs import Dataset
from mrl_pg.tools.measure.prefix_recall import PrefixRecall
from mrl_pg.tools.measure.scratch import HNSWParameters, ScratchTable
from mrl_pg.tools.measure.timing import time_queries
from mrl_pg.tools.server import create_vector_extension
from mrl_pg.tools.synthetic import exact_neighbors, recall_at_k

#: Candidate counts measured per prefix size: the smallest this many whose exact recall
#: reaches the target (larger ones only add rerank work once the prefix ranking is good).
COUNTS_PER_PREFIX = 3
#: Times every setting is run over the queries; its q/s is the median round's.
ROUNDS = 3
#: ``hnsw.ef_search`` per candidate count C, as multiples of C (the library's default joins).
EF_FACTORS = (1, 2, 4)


@dataclass(frozen=True)
class Setting:
    """One search setting to measure."""

    prefix_dims: int
    storage: Storage
    candidates: int
    ef_search: int


@dataclass(frozen=True)
class Measured:
    """A setting's measured recall@k (mean, and of the worst 5% of queries) and q/s."""

    prefix_dims: int
    storage: str
    candidates: int
    ef_search: int
    recall: float
    worst_5: float
    qps: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def ladder(
    figures: Sequence[PrefixRecall], storages: Sequence[Storage], target: float
) -> list[Setting]:
    """The settings worth measuring: for every prefix size whose exact recall reaches
    ``target``, its smallest reaching candidate counts, each at the ef_search values of
    ``EF_FACTORS`` and the library's default, in every storage."""
    low, high = EF_SEARCH_RANGE
    settings: list[Setting] = []
    for figure in sorted(figures, key=lambda f: f.dims):
        reaching = [c for c, mean in zip(figure.candidates, figure.mean(), strict=True)
                    if mean >= target][:COUNTS_PER_PREFIX]
        for storage in storages:
            for count in reaching:
                efs = {min(max(count * f, low), high) for f in EF_FACTORS}
                efs.add(default_ef_search(count))
                settings.extend(Setting(figure.dims, storage, count, ef) for ef in sorted(efs))
    return settings


def measure(
    engine: Engine,
    dataset: Dataset,
    settings: Sequence[Setting],
    k: int,
    distance: Distance,
) -> list[Measured]:
    """Time every setting with ``mrl_search`` on a scratch copy of ``dataset``: ``ROUNDS``
    rounds, every setting once per round (interleaved, so that a load on the machine falls on
    all alike), q/s from the median round."""
    create_vector_extension(engine)
    truth = exact_neighbors(dataset.vectors, dataset.queries, k, distance)
    stages = sorted({(s.prefix_dims, s.storage) for s in settings},
                    key=lambda p: (p[0], p[1].value))
    scratch = ScratchTable(engine, dataset, stages, distance, HNSWParameters())
    seconds: dict[Setting, list[float]] = {s: [] for s in settings}
    found: dict[Setting, list[list[int]]] = {}
    scratch.create()
    try:
        for dims, storage in stages:
            scratch.build(scratch.prefix_index(scratch.prefix(dims, storage)))
        target = select(scratch.table.c.id)
        with engine.connect() as conn:
            for round_number in range(1, ROUNDS + 1):
                print(f"  round {round_number} of {ROUNDS}", flush=True)
                for s in settings:
                    options = {"prefix": scratch.prefix(s.prefix_dims, s.storage).name,
                               "candidates": s.candidates, "ef_search": s.ef_search}

                    def search(query: npt.NDArray[np.float32],
                               options: dict[str, Any] = options) -> list[int]:
                        statement = mrl_search(target, query, k, **options)
                        ids = [int(i) for i in conn.execute(statement).scalars()]
                        conn.commit()
                        return ids

                    label = (f"{s.prefix_dims} {s.storage.value} c={s.candidates} "
                             f"ef={s.ef_search}")
                    timing = time_queries(search, dataset.queries, label)
                    seconds[s].append(timing.seconds)
                    found[s] = timing.found
    finally:
        scratch.drop()
    return [_summary(s, found[s], truth, statistics.median(seconds[s])) for s in settings]


def _summary(
    setting: Setting, found: list[list[int]], truth: npt.NDArray[np.int64], seconds: float
) -> Measured:
    per_query = sorted(recall_at_k([ids], truth[i : i + 1]) for i, ids in enumerate(found))
    worst = per_query[: max(1, math.ceil(0.05 * len(per_query)))]
    return Measured(
        setting.prefix_dims, setting.storage.value, setting.candidates, setting.ef_search,
        recall_at_k(found, truth), float(np.mean(worst)), len(found) / seconds,
    )


def fastest(measured: Sequence[Measured], target: float, worst: bool) -> Measured | None:
    """The measured setting with the most q/s among those whose recall reaches ``target``
    (and, with ``worst``, whose worst 5% of queries reach it too); ties go to the smaller
    prefix, then fewer candidates, then the lower ef_search."""
    reaching = [m for m in measured
                if m.recall >= target and (not worst or m.worst_5 >= target)]
    return max(reaching, default=None,
               key=lambda m: (m.qps, -m.prefix_dims, -m.candidates, -m.ef_search))
