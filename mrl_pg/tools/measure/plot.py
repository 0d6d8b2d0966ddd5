"""PNG plots: the bench's recall vs queries/s, and evaluate's recall per prefix size and per
segment.

matplotlib (the ``plot`` extra) is imported only here, with the file-only Agg backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from mrl_pg.errors import MissingDependencyError
from mrl_pg.tools.measure.report import curve
from mrl_pg.tools.measure.timing import Result


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MissingDependencyError(
            "plots need matplotlib: pip install 'mrl-pg[plot]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bench_plot(results: Sequence[Result], path: Path, title: str) -> None:
    """Recall@k (x) against the median queries/s (y, log scale): a curve per method and
    prefix."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 5.5))

    ordered = sorted(results, key=curve)
    for name, group in groupby(ordered, key=curve):
        points = sorted(group, key=lambda r: (r.candidates or 0, r.ef_search or 0))
        style = "--" if name.startswith("handwritten") else "-"
        axes.plot(
            [r.recall for r in points], [r.qps for r in points], style, marker="o", label=name
        )
        for r in points:
            knob = r.candidates if r.candidates is not None else r.ef_search
            if knob is not None:
                axes.annotate(str(knob), (r.recall, r.qps), fontsize=7,
                              textcoords="offset points", xytext=(3, 3))
    k = results[0].k if results else 10
    axes.set_xlabel(f"recall@{k}")
    axes.set_ylabel("queries/s (one client)")
    axes.set_yscale("log")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate_plot(
    candidates: Sequence[int],
    mean: dict[int, list[float]],
    worst_5: dict[int, list[float]],
    target: float,
    path: Path,
    title: str,
) -> None:
    """Mean and worst-5% recall against the candidate count, a curve per prefix size."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for dims in sorted(mean):
        left.plot(candidates, mean[dims], marker="o", label=f"prefix {dims}")
        right.plot(candidates, worst_5[dims], marker="o", label=f"prefix {dims}")
    for axes, what in ((left, "mean recall"), (right, "mean recall of the worst 5% of queries")):
        axes.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
        axes.set_xscale("log")
        axes.set_xlabel("candidates")
        axes.set_title(what, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
    left.set_ylabel("recall")
    left.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def segment_plot(
    segments: Sequence[str],
    recall: dict[int, list[float]],
    ranked_prefix: int,
    candidates: int,
    target: float,
    path: Path,
    title: str,
) -> None:
    """Recall of every segment (x, in the order given), a bar for the prefix the segments are
    ranked at (red below the target) and a marker per other prefix size."""
    plt = _pyplot()
    width = min(max(6.0, 0.35 * len(segments) + 2), 24.0)
    figure, axes = plt.subplots(figsize=(width, 4.5))
    positions = list(range(len(segments)))
    ranked = recall[ranked_prefix]
    colours = ["tab:red" if value < target else "tab:blue" for value in ranked]
    axes.bar(positions, ranked, color=colours, alpha=0.7,
             label=f"prefix {ranked_prefix} (red: below target)")
    for dims in sorted(recall):
        if dims != ranked_prefix:
            axes.plot(positions, recall[dims], linestyle="none", marker="o", markersize=4,
                      label=f"prefix {dims}")
    axes.axhline(target, color="grey", linestyle=":", label=f"target {target:g}")
    axes.set_xticks(positions)
    axes.set_xticklabels(segments, rotation=90 if len(segments) > 12 else 0, fontsize=8)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel(f"mean recall, {candidates} candidates")
    axes.set_xlabel("segment (lowest first)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
