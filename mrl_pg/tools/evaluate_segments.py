"""``mrl-pg evaluate --segment COLUMN``: recall per value of a column of a table, to find the
tenants, languages or categories a prefix serves worse than the average suggests.

Queries are held out of each segment (``--query-count`` per segment). Every prefix size x
candidate count is evaluated per segment (see :mod:`mrl_pg.tools.measure.segment_recall`).
The segments are ranked by their recall at one configuration: the one recommended for all
queries pooled (the smallest prefix reaching the target), or, when none does, the largest
prefix with the most candidates. Segments below the target come first, each with its full
table; a PNG plots every segment's recall.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mrl_pg.tools.evaluate import check_sizes, default_prefixes, recommend
from mrl_pg.tools.measure.arguments import engine_from_args
from mrl_pg.tools.measure.errors import SegmentOptionError, TooFewRowsError
from mrl_pg.tools.measure.inputs import from_table_segments
from mrl_pg.tools.measure.segment_recall import SegmentRecall, pooled, segment_recall


@dataclass(frozen=True)
class Ranking:
    """The configuration segments are ranked at, and whether it is the recommendation."""

    prefix_dims: int
    candidates: int
    recommended: bool


def evaluate_segments(args: argparse.Namespace) -> dict[str, Any]:
    """Compute, print and write the per-segment figures ``args`` asks for; returns the JSON
    document."""
    if args.table is None:
        raise SegmentOptionError(
            "--segment reads the segment column from a table: give --table (and --column)"
        )
    if args.queries is not None:
        raise SegmentOptionError(
            "--segment holds its queries out of each segment and takes no --queries file"
        )
    engine = engine_from_args(args)
    try:
        data = from_table_segments(
            engine, args.table, args.column, args.segment, args.rows, args.seed
        )
    finally:
        engine.dispose()
    dims = int(data.vectors.shape[1])
    prefixes = args.prefix or default_prefixes(dims)
    check_sizes(args, dims, prefixes)
    segments, too_small = segment_recall(
        data, prefixes, args.candidates, args.k, args.distance, args.query_count, args.seed,
        args.across_segments,
    )
    if not segments:
        raise TooFewRowsError(
            f"no segment of {args.segment} has more than k={args.k} rows to measure"
        )
    choice = recommend(pooled(segments), args.target_recall, args.worst)
    ranking = (
        Ranking(choice.prefix_dims, choice.candidates, True) if choice is not None
        else Ranking(max(prefixes), max(args.candidates), False)
    )
    ranked = sorted(
        segments, key=lambda s: (s.recall_at(ranking.prefix_dims, ranking.candidates), s.segment)
    )
    scope = "every row" if args.across_segments else "the rows of its own segment"
    print(f"data: {data.source}; {len(data.vectors)} rows x {dims} dims, {len(segments)} "
          f"segments, each query searching {scope}; k={args.k}, {args.distance.value} distance")
    print(_ranking_text(ranked, ranking, args))
    if too_small:
        print(f"not measured (k={args.k} rows or fewer): {', '.join(too_small)}")
    document = _document(args, ranked, ranking, too_small)
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    from mrl_pg.tools.measure.plot import segment_plot

    segment_plot(
        [s.segment for s in ranked],
        {dims: [s.recall_at(dims, ranking.candidates) for s in ranked] for dims in prefixes},
        ranking.prefix_dims,
        ranking.candidates,
        args.target_recall,
        args.plot,
        f"recall@{args.k} by {args.segment}, {ranking.candidates} candidates, exact prefix "
        "ranking then full rerank",
    )
    print(f"plot written to {args.plot}")
    return document


def _ranking_text(ranked: Sequence[SegmentRecall], ranking: Ranking,
                  args: argparse.Namespace) -> str:
    at = f"prefix {ranking.prefix_dims} with {ranking.candidates} candidates"
    why = ("the smallest reaching the target for all queries pooled" if ranking.recommended
           else "no configuration reaches the target for all queries pooled")
    target = args.target_recall
    below = [s for s in ranked if s.recall_at(ranking.prefix_dims, ranking.candidates) < target]
    lines = [
        f"segments by recall@{args.k} at {at} ({why}), lowest first; target {target:g}",
        f"{args.segment:>16} {'rows':>7} {'queries':>7} {f'recall@{args.k}':>9} {'worst 5%':>9}",
    ]
    for s in ranked:
        figure = next(f for f in s.figures if f.dims == ranking.prefix_dims)
        j = figure.candidates.index(ranking.candidates)
        recall, low = figure.mean()[j], figure.worst(0.05)[j]
        flag = "  below target" if recall < target else ""
        lines.append(f"{s.segment:>16} {s.rows:>7} {s.queries:>7} {recall:>9.3f} {low:>9.3f}"
                     f"{flag}")
    lines.append(f"{len(below)} of {len(ranked)} segments below the target at {at}")
    for s in below:
        lines.append(f"\n{args.segment} {s.segment}: recall@{args.k} by prefix (rows) and "
                     "candidates (columns)")
        counts = s.figures[0].candidates
        lines.append(f"{'prefix':>6} " + " ".join(f"{f'c={c}':>7}" for c in counts))
        for figure in s.figures:
            lines.append(f"{figure.dims:>6} " + " ".join(f"{v:>7.3f}" for v in figure.mean()))
    return "\n".join(lines)


def _document(args: argparse.Namespace, ranked: Sequence[SegmentRecall], ranking: Ranking,
              too_small: list[str]) -> dict[str, Any]:
    return {
        "segment_column": args.segment,
        "scope": "across" if args.across_segments else "within",
        "k": args.k,
        "target_recall": args.target_recall,
        "ranked_at": ranking.__dict__,
        "segments": [
            {
                "segment": s.segment,
                "rows": s.rows,
                "queries": s.queries,
                "recall": s.recall_at(ranking.prefix_dims, ranking.candidates),
                "results": [
                    {"prefix_dims": f.dims, "candidates": count, "recall": mean,
                     "worst_5pct": low5}
                    for f in s.figures
                    for count, mean, low5 in zip(f.candidates, f.mean(), f.worst(0.05),
                                                 strict=True)
                ],
            }
            for s in ranked
        ],
        "too_small": too_small,
    }
