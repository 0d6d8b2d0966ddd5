"""Evaluate recall@k per prefix size and candidate count on your data, and recommend a prefix.

Reads the vectors (an ``.npy`` file, a column of an existing table, or the MRL-like generator)
and samples queries: a query file, or rows held out from the vectors. For every prefix size and
candidate count it computes, exactly in numpy, what the two-stage search returns when the
prefix ranking is exact, against the exact full-dimension neighbours. It prints mean recall
and the mean recall of the 1% and 5% of queries that fare worst, recommends the smallest
prefix that reaches ``--target-recall`` (on average and, with ``--worst``, for the worst 5%
too), and writes a PNG.

"recommended: prefix N with C candidates" means ``mrl_prefix(embedding, N)`` on the model and
``mrl_search(..., candidates=C)`` (or ``oversample=C/k``) when searching.

Its recall is an upper bound: the prefix ranking is exact float32 arithmetic, where the HNSW
index is approximate and ``halfvec``/``bit`` storage rounds the prefix. ``--measure`` then
measures what the search costs: for every prefix size whose exact recall reaches the target,
in every ``--storage`` (default halfvec), it builds the prefix's HNSW index on a scratch copy
of the vectors (a schema ``mrl_pg_bench_*`` in the database, dropped at the end), runs
``mrl_search`` over every query at its smallest reaching candidate counts and several
``ef_search`` values, and recommends the (prefix, storage, candidates, ef_search) with the
most queries/s whose measured recall reaches the target. It needs a database (``--dsn``, else
``MRL_PG_DSN``, else the embedded server) where it may create a schema; without ``--measure``
nothing is written to any database.

A table is only read, with one ``SELECT``, and every row it sends is held in memory: give
``--rows N`` to read a random sample of N rows instead (the same rows for the same ``--seed``;
the server still scans the whole table). The plot needs matplotlib (``pip install
'mrl-pg[plot]'``); without it the figures are printed and the JSON written, then the command
says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from mrl_pg.errors import PrefixConfigError, SearchParameterError
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.tools.measure.arguments import (
    add_source_arguments,
    comma_list,
    dataset_from_args,
    engine_from_args,
)
from mrl_pg.tools.measure.errors import SegmentOptionError
from mrl_pg.tools.measure.inputs import Dataset
from mrl_pg.tools.measure.prefix_recall import PrefixRecall, prefix_recall
from mrl_pg.tools.measure.search_cost import Measured, fastest, ladder, measure


@dataclass(frozen=True)
class Recommendation:
    prefix_dims: int
    candidates: int
    recall: float
    worst_5: float


def configure(parser: argparse.ArgumentParser) -> None:
    add_source_arguments(parser, default_dims=768)
    runs = parser.add_argument_group("what to evaluate")
    runs.add_argument("--prefix", type=comma_list(int), default=None,
                      help="prefix sizes (default: 32, 64, ... below the full dims)")
    runs.add_argument("--candidates", type=comma_list(int), default=[10, 20, 40, 80, 160],
                      help="first-stage candidate counts (default 10,20,40,80,160)")
    runs.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    runs.add_argument("--distance", type=Distance.parse, default=Distance.COSINE,
                      help="cosine, inner_product or l2 (default cosine)")
    runs.add_argument("--target-recall", type=float, default=0.95,
                      help="mean recall@k the recommended prefix must reach (default 0.95)")
    runs.add_argument("--worst", action="store_true",
                      help="require the target of the worst 5%% of queries (their mean recall) too")
    runs.add_argument("--segment", metavar="COLUMN",
                      help="recall per value of this column of --table (a tenant, a language): "
                           "--query-count queries held out of each segment, lowest segments "
                           "first, plotted by segment")
    runs.add_argument("--across-segments", action="store_true",
                      help="with --segment: each query searches every row, not only its own "
                           "segment's (as a search filtered on the column does)")
    runs.add_argument("--measure", action="store_true",
                      help="also time mrl_search on a scratch copy (HNSW indexes built in a "
                           "schema of its own, dropped afterwards) over candidates and "
                           "ef_search, and recommend the fastest setting reaching the target")
    runs.add_argument("--storage", type=comma_list(Storage.parse), default=[Storage.HALFVEC],
                      help="with --measure: prefix storages, vector, halfvec, bit "
                           "(default halfvec)")
    out = parser.add_argument_group("output")
    out.add_argument("--plot", type=Path, default=Path("mrl-pg-evaluate.png"),
                     help="PNG to write (default mrl-pg-evaluate.png)")
    out.add_argument("--json", type=Path, help="write the figures to this JSON file")


def run(args: argparse.Namespace) -> int:
    evaluate(args)
    return 0


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Compute, print and write everything ``args`` asks for; returns the JSON document."""
    if args.segment is not None:
        if args.measure:
            raise SegmentOptionError("--measure does not apply per segment; leave out --segment")
        from mrl_pg.tools.evaluate_segments import evaluate_segments

        return evaluate_segments(args)
    dataset = _load(args, lambda: engine_from_args(args))
    prefixes = args.prefix or default_prefixes(dataset.dims)
    dataset.check_k(args.k)
    check_sizes(args, dataset.dims, prefixes)
    print(f"data: {dataset.source}; {len(dataset.vectors)} rows x {dataset.dims} dims, "
          f"{len(dataset.queries)} queries, k={args.k}, {args.distance.value} distance")
    figures = prefix_recall(dataset.vectors, dataset.queries, prefixes, args.candidates, args.k,
                            args.distance)
    choice = recommend(figures, args.target_recall, args.worst)
    print(_table(figures, args.k))
    print(_recommendation_text(choice, args.target_recall, args.worst))
    document = _document(args, dataset, figures, choice)
    if args.measure:
        measured = _measure(args, dataset, figures)
        fast = fastest(measured, args.target_recall, args.worst)
        if measured:
            print(_measured_table(measured, args.k))
            print(_measured_text(fast, args.target_recall, args.worst))
        document["measured"] = [m.as_json() for m in measured]
        document["recommended_measured"] = None if fast is None else fast.as_json()
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    from mrl_pg.tools.measure.plot import evaluate_plot

    evaluate_plot(
        figures[0].candidates,
        {f.dims: f.mean() for f in figures},
        {f.dims: f.worst(0.05) for f in figures},
        args.target_recall,
        args.plot,
        f"recall@{args.k}, exact prefix ranking then full rerank; {dataset.source}",
    )
    print(f"plot written to {args.plot}")
    return document


def recommend(
    figures: Sequence[PrefixRecall], target: float, worst: bool
) -> Recommendation | None:
    """The smallest prefix (then fewest candidates) reaching ``target``."""
    for figure in sorted(figures, key=lambda f: f.dims):
        for count, mean, low in zip(figure.candidates, figure.mean(), figure.worst(0.05),
                                    strict=True):
            if mean >= target and (not worst or low >= target):
                return Recommendation(figure.dims, count, mean, low)
    return None


def _measure(
    args: argparse.Namespace, dataset: Dataset, figures: Sequence[PrefixRecall]
) -> list[Measured]:
    settings = ladder(figures, args.storage, args.target_recall)
    if not settings:
        print("nothing to measure: no prefix size reaches the target even ranked exactly")
        return []
    print(f"measuring {len(settings)} settings with mrl_search on a scratch copy", flush=True)
    engine = engine_from_args(args)
    try:
        return measure(engine, dataset, settings, args.k, args.distance)
    finally:
        engine.dispose()


def _load(args: argparse.Namespace, engine: Callable[[], Engine]) -> Dataset:
    made: list[Engine] = []

    def connect() -> Engine:
        made.append(engine())
        return made[-1]

    try:
        return dataset_from_args(args, connect)
    finally:
        for each in made:
            each.dispose()


def default_prefixes(dims: int) -> list[int]:
    sizes, size = [], 32
    while size < dims:
        sizes.append(size)
        size *= 2
    return sizes or [dims // 2]


def check_sizes(args: argparse.Namespace, dims: int, prefixes: list[int]) -> None:
    """k, candidate counts, prefix sizes (against vectors of ``dims``) and the target."""
    if args.k < 1:
        raise SearchParameterError(f"k must be positive, got {args.k}")
    for count in args.candidates:
        if count < args.k:
            raise SearchParameterError(f"candidates ({count}) must be at least k ({args.k})")
    for size in prefixes:
        if not 0 < size < dims:
            raise PrefixConfigError(
                f"prefix size {size} must be between 1 and the vectors' {dims - 1}"
            )
    if not 0 < args.target_recall <= 1:
        raise SearchParameterError(f"--target-recall must be in (0, 1], got {args.target_recall}")


def _table(figures: Sequence[PrefixRecall], k: int) -> str:
    lines = [f"{'prefix':>6} {'cand':>5} {f'recall@{k}':>9} {'worst 5%':>9} {'worst 1%':>9}"]
    for figure in figures:
        for count, mean, low5, low1 in zip(figure.candidates, figure.mean(), figure.worst(0.05),
                                           figure.worst(0.01), strict=True):
            lines.append(f"{figure.dims:>6} {count:>5} {mean:>9.3f} {low5:>9.3f} {low1:>9.3f}")
    return "\n".join(lines)


def _goal(target: float, worst: bool) -> str:
    return f"recall {target:g}" + (" for the worst 5% of queries too" if worst else "")


def _recommendation_text(choice: Recommendation | None, target: float, worst: bool) -> str:
    goal = _goal(target, worst)
    if choice is None:
        return (f"no prefix size reaches {goal}: try more candidates, larger prefixes, or "
                "the full-dimension index")
    return (f"recommended: prefix {choice.prefix_dims} with {choice.candidates} candidates "
            f"(recall {choice.recall:.3f}, worst 5% of queries {choice.worst_5:.3f}) "
            f"is the smallest reaching {goal}")


def _measured_table(measured: Sequence[Measured], k: int) -> str:
    lines = [f"{'prefix':>6} {'storage':<8} {'cand':>5} {'ef':>5} {f'recall@{k}':>9} "
             f"{'worst 5%':>9} {'q/s':>8}"]
    lines.extend(
        f"{m.prefix_dims:>6} {m.storage:<8} {m.candidates:>5} {m.ef_search:>5} "
        f"{m.recall:>9.3f} {m.worst_5:>9.3f} {m.qps:>8.1f}"
        for m in measured
    )
    return "\n".join(lines)


def _measured_text(choice: Measured | None, target: float, worst: bool) -> str:
    goal = _goal(target, worst)
    if choice is None:
        return (f"measured: no setting reaches {goal} with its HNSW index; try more "
                "candidates (--candidates) or a larger prefix")
    return (f"recommended by measured cost: prefix {choice.prefix_dims} {choice.storage}, "
            f"candidates {choice.candidates}, ef_search {choice.ef_search} (recall "
            f"{choice.recall:.3f}, {choice.qps:.0f} q/s) is the fastest measured reaching "
            f"{goal}: mrl_prefix(embedding, {choice.prefix_dims}, storage=\"{choice.storage}\") "
            f"and mrl_search(..., candidates={choice.candidates}, "
            f"ef_search={choice.ef_search})")


def _document(
    args: argparse.Namespace,
    dataset: Dataset,
    figures: Sequence[PrefixRecall],
    choice: Recommendation | None,
) -> dict[str, Any]:
    rows = [
        {"prefix_dims": f.dims, "candidates": count, "k": args.k, "recall": mean,
         "worst_5pct": low5, "worst_1pct": low1}
        for f in figures
        for count, mean, low5, low1 in zip(f.candidates, f.mean(), f.worst(0.05),
                                           f.worst(0.01), strict=True)
    ]
    return {
        "rows": len(dataset.vectors),
        "dims": dataset.dims,
        "queries": len(dataset.queries),
        "target_recall": args.target_recall,
        "results": rows,
        "recommended": None if choice is None else choice.__dict__,
    }
