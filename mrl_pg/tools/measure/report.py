"""The bench's printed report: a table of results, each method's recall ceiling, and
two-stage / full-HNSW ratios.

Every figure is a median over the bench's repeats. Ratios are taken at matched recall: each
two-stage row is set against the fastest ``full_hnsw`` row whose recall is at least as high
(the full index tuned to the same recall).
"""

from __future__ import annotations

from collections.abc import Sequence

from mrl_pg.tools.measure.timing import Result

TWO_STAGE = ("handwritten", "mrl_search")
HEADER = (
    f"{'method':<12} {'prefix':>6} {'storage':<8} {'cand':>5} {'ef':>5} {'recall':>7} "
    f"{'q/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'server ms':>9} {'index MB':>9} {'build s':>8}"
)


def table(results: Sequence[Result]) -> str:
    lines = [HEADER, "-" * len(HEADER)]
    for r in results:
        lines.append(
            f"{r.method:<12} {_opt(r.prefix_dims):>6} {r.storage or '-':<8} "
            f"{_opt(r.candidates):>5} {_opt(r.ef_search):>5} {r.recall:>7.3f} {r.qps:>8.1f} "
            f"{r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.server_ms:>9.2f} "
            f"{r.index_bytes / 1e6:>9.1f} {r.build_s:>8.1f}"
        )
    return "\n".join(lines)


def curve(row: Result) -> str:
    """The method a row belongs to, its setting aside: ``full_hnsw``, ``mrl_search 256
    halfvec``, ..."""
    if row.method in TWO_STAGE:
        return f"{row.method} {row.prefix_dims} {row.storage}"
    return row.method


def ceilings(results: Sequence[Result]) -> str:
    """Each method's recall ceiling: the best recall it reached at any setting measured."""
    best: dict[str, Result] = {}
    for row in results:
        name = curve(row)
        if name not in best or row.recall > best[name].recall:
            best[name] = row
    lines = ["Recall ceiling (best recall at any setting measured):"]
    for name, row in best.items():
        lines.append(f"  {name:<28} {row.recall:.3f} at {_setting(row)}, {row.qps:.0f} q/s")
    return "\n".join(lines)


def matched_full_hnsw(row: Result, results: Sequence[Result]) -> Result | None:
    """The fastest full-dimension HNSW row with at least ``row``'s recall, if any."""
    reaching = [r for r in results if r.method == "full_hnsw" and r.recall >= row.recall]
    return max(reaching, key=lambda r: r.qps, default=None)


def ratios(results: Sequence[Result]) -> str:
    """One line per two-stage row: its speed, server time, index size and build time over full
    HNSW's at matched recall; then mrl_search over the hand-written SQL."""
    lines = ["At matched recall, two-stage / full-dimension HNSW:"]
    best_full = max(
        (r for r in results if r.method == "full_hnsw"), key=lambda r: r.recall, default=None
    )
    for row in (r for r in results if r.method in TWO_STAGE):
        label = (
            f"  {row.method:<11} prefix {row.prefix_dims} {row.storage} "
            f"candidates {row.candidates}: recall {row.recall:.3f}, {row.qps:.0f} q/s"
        )
        full = matched_full_hnsw(row, results)
        if full is None:
            reached = (
                f"; full HNSW reached at most {best_full.recall:.3f} "
                f"(ef_search {best_full.ef_search})" if best_full else ""
            )
            lines.append(f"{label}: no full HNSW setting matches this recall{reached}")
            continue
        lines.append(
            f"{label} vs ef_search {full.ef_search} (recall {full.recall:.3f}, "
            f"{full.qps:.0f} q/s): q/s x{row.qps / full.qps:.2f}, "
            f"p50 x{row.p50_ms / full.p50_ms:.2f}, "
            f"server x{_ratio(row.server_ms, full.server_ms)}, "
            f"index x{_ratio(row.index_bytes, full.index_bytes)}, "
            f"build x{_ratio(row.build_s, full.build_s)}"
        )
    lines.extend(_library_vs_handwritten(results))
    return "\n".join(lines)


def _library_vs_handwritten(results: Sequence[Result]) -> list[str]:
    by_config = {
        (r.prefix_dims, r.storage, r.candidates): r for r in results if r.method == "handwritten"
    }
    lines = []
    for row in (r for r in results if r.method == "mrl_search"):
        hand = by_config.get((row.prefix_dims, row.storage, row.candidates))
        if hand is not None:
            lines.append(
                f"  mrl_search / handwritten, prefix {row.prefix_dims} {row.storage} "
                f"candidates {row.candidates}: q/s x{row.qps / hand.qps:.2f}, "
                f"p50 x{row.p50_ms / hand.p50_ms:.2f}, "
                f"server x{_ratio(row.server_ms, hand.server_ms)}"
            )
    return ["mrl_search / hand-written SQL, same configuration:", *lines] if lines else []


def _setting(row: Result) -> str:
    if row.candidates is not None:
        return f"{row.candidates} candidates"
    if row.ef_search is not None:
        return f"ef_search {row.ef_search}"
    return "its only setting"


def _ratio(part: float, whole: float) -> str:
    return f"{part / whole:.2f}" if whole else "-"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)
