"""``mrl-pg evaluate --measure``: which settings it measures, how it chooses among the measured
figures, and, end to end on a real database, that its choice reaches the target recall."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, Table, select, text

from mrl_pg import add_prefix_column, mrl_search
from mrl_pg.prefix.spec import Storage
from mrl_pg.search.defaults import default_ef_search
from mrl_pg.tools import evaluate
from mrl_pg.tools.cli import main
from mrl_pg.tools.measure.errors import SegmentOptionError
from mrl_pg.tools.measure.prefix_recall import PrefixRecall
from mrl_pg.tools.measure.search_cost import EF_FACTORS, Measured, Setting, fastest, ladder
from mrl_pg.tools.synthetic import exact_neighbors, recall_at_k
from tests.data import create_and_load, decaying_vectors


def measured(dims: int, candidates: int, ef: int, recall: float, qps: float,
             worst_5: float | None = None, storage: str = "halfvec") -> Measured:
    return Measured(dims, storage, candidates, ef, recall,
                    recall if worst_5 is None else worst_5, qps)


def figure(dims: int, means: dict[int, float]) -> PrefixRecall:
    """A prefix size whose every query has the given recall at each candidate count."""
    per_query = np.tile(np.array(list(means.values())), (4, 1))
    return PrefixRecall(dims, list(means), per_query)


FIGURES = [
    measured(64, 40, 80, 0.93, 900.0),     # fastest, below the target
    measured(128, 40, 40, 0.94, 800.0),    # below the target
    measured(128, 40, 80, 0.951, 700.0),   # the fastest reaching 0.95
    measured(128, 80, 160, 0.97, 500.0),
    measured(256, 20, 40, 0.99, 650.0),
]


def test_fastest_is_the_most_queries_per_second_among_settings_reaching_the_target() -> None:
    assert fastest(FIGURES, 0.95, worst=False) == FIGURES[2]
    assert fastest(FIGURES, 0.98, worst=False) == FIGURES[4]
    assert fastest(FIGURES, 0.999, worst=False) is None
    assert fastest([], 0.5, worst=False) is None


def test_fastest_with_worst_needs_the_worst_queries_to_reach_the_target_too() -> None:
    figures = [measured(64, 40, 80, 0.96, 900.0, worst_5=0.5),
               measured(128, 40, 80, 0.97, 600.0, worst_5=0.96)]
    assert fastest(figures, 0.95, worst=False) == figures[0]
    assert fastest(figures, 0.95, worst=True) == figures[1]


def test_fastest_breaks_ties_towards_the_smaller_setting() -> None:
    tied = [measured(128, 80, 160, 0.96, 500.0), measured(64, 80, 160, 0.96, 500.0),
            measured(64, 40, 160, 0.96, 500.0), measured(64, 40, 80, 0.96, 500.0)]
    assert fastest(tied, 0.95, worst=False) == tied[3]


def test_ladder_measures_only_what_exact_recall_says_can_reach_the_target() -> None:
    figures = [
        figure(32, {10: 0.5, 20: 0.6, 40: 0.7, 80: 0.8}),     # never reaches 0.9
        figure(64, {10: 0.7, 20: 0.85, 40: 0.92, 80: 0.97}),  # from 40 candidates
        figure(128, {10: 0.95, 20: 0.99, 40: 1.0, 80: 1.0}),  # from 10
    ]
    settings = ladder(figures, [Storage.HALFVEC, Storage.BIT], 0.9)
    assert {(s.prefix_dims, s.candidates) for s in settings} == {
        (64, 40), (64, 80), (128, 10), (128, 20), (128, 40)
    }
    assert {s.storage for s in settings} == {Storage.HALFVEC, Storage.BIT}
    efs = sorted(s.ef_search for s in settings
                 if (s.prefix_dims, s.candidates, s.storage) == (64, 40, Storage.HALFVEC))
    assert efs == sorted({40 * f for f in EF_FACTORS} | {default_ef_search(40)})
    assert all(1 <= s.ef_search <= 1000 for s in settings)
    assert ladder(figures[:1], [Storage.HALFVEC], 0.9) == []


def test_ladder_keeps_ef_search_within_pgvector_limits() -> None:
    settings = ladder([figure(16, {600: 1.0})], [Storage.HALFVEC], 0.9)
    assert {s.ef_search for s in settings} == {600, 1000}
    assert all(isinstance(s, Setting) for s in settings)


@pytest.mark.slow
def test_measured_recommendation_reaches_the_target_on_a_real_index(
    database_url: str, engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors, queries = decaying_vectors(2000, 48, seed=11), decaying_vectors(30, 48, seed=12)
    vectors_file, queries_file = tmp_path / "v.npy", tmp_path / "q.npy"
    np.save(vectors_file, vectors)
    np.save(queries_file, queries)
    out = tmp_path / "evaluate.json"
    target = 0.9
    status = main([
        "evaluate", "--vectors", str(vectors_file), "--queries", str(queries_file),
        "--dsn", database_url, "--prefix", "8,16,24", "--candidates", "10,20,40",
        "--target-recall", str(target), "--measure", "--json", str(out),
        "--plot", str(tmp_path / "p.png"),
    ])
    assert status == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    rows = document["measured"]
    assert rows, "something reaches the target ranked exactly, so something is measured"
    exact = {(r["prefix_dims"], r["candidates"]): r["recall"] for r in document["results"]}
    for row in rows:
        assert exact[row["prefix_dims"], row["candidates"]] >= target
        assert 0 <= row["worst_5"] <= row["recall"] <= 1 and row["qps"] > 0
    chosen = document["recommended_measured"]
    assert chosen is not None and chosen["recall"] >= target
    assert chosen["qps"] == max(r["qps"] for r in rows if r["recall"] >= target)
    assert (f"recommended by measured cost: prefix {chosen['prefix_dims']} "
            f"{chosen['storage']}, candidates {chosen['candidates']}, "
            f"ef_search {chosen['ef_search']}") in printed
    with engine.connect() as conn:
        assert conn.execute(text(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'mrl_pg_bench_%'"
        )).scalar_one() == 0

    # The chosen setting, on a table of the user's own, against exact numpy ground truth.
    table = Table("measured_docs", MetaData(), Column("id", Integer, primary_key=True),
                  Column("embedding", VECTOR(48)))
    add_prefix_column(table, "embedding", chosen["prefix_dims"], name="head",
                      storage=chosen["storage"])
    create_and_load(engine, table, "embedding", vectors, {"id": range(len(vectors))})
    with engine.connect() as conn:
        found = [
            list(conn.execute(mrl_search(
                select(table.c.id), query, 10, prefix="head",
                candidates=chosen["candidates"], ef_search=chosen["ef_search"],
            )).scalars())
            for query in queries
        ]
    assert recall_at_k(found, exact_neighbors(vectors, queries, 10)) >= target - 0.05


def test_measure_does_not_apply_per_segment() -> None:
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    args = parser.parse_args(["--table", "t", "--segment", "tenant", "--measure"])
    with pytest.raises(SegmentOptionError, match="--measure does not apply per segment"):
        evaluate.evaluate(args)


def test_measure_builds_nothing_when_no_prefix_can_reach_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors_file = tmp_path / "v.npy"
    np.save(vectors_file, decaying_vectors(600, 32, seed=13))
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    document = evaluate.evaluate(parser.parse_args([
        "--vectors", str(vectors_file), "--query-count", "20", "--prefix", "2",
        "--candidates", "10", "--target-recall", "1.0", "--measure",
        # No database is reached: an unreachable DSN would fail if one were.
        "--dsn", "postgresql://nobody@127.0.0.1:1/none", "--plot", str(tmp_path / "p.png"),
    ]))
    assert document["measured"] == [] and document["recommended_measured"] is None
    assert "nothing to measure" in capsys.readouterr().out
