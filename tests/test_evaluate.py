"""``mrl-pg evaluate`` end to end on small data, checked against an independent numpy search."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, text

from mrl_pg.errors import PrefixConfigError
from mrl_pg.load import copy_vectors
from mrl_pg.tools import evaluate
from mrl_pg.tools.cli import main
from mrl_pg.tools.measure.errors import (
    DimensionMismatchError,
    TooFewRowsError,
    UnknownTableError,
    VectorFileError,
)
from mrl_pg.tools.measure.inputs import from_files, from_table, from_table_segments
from tests.data import decaying_vectors

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def per_query_recall(vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32],
                     prefix: int, candidates: int, k: int) -> float:
    """One query's recall@k, two stages by plain sorting of cosine similarities."""
    def top(rows: npt.NDArray[np.float32], q: npt.NDArray[np.float32], n: int) -> list[int]:
        sims = [float(r @ q / (np.linalg.norm(r) * np.linalg.norm(q))) for r in rows]
        return sorted(range(len(rows)), key=lambda i: -sims[i])[:n]

    truth = set(top(vectors, query, k))
    shortlist = top(vectors[:, :prefix], query[:prefix], candidates)
    reranked = [shortlist[i] for i in top(vectors[shortlist], query, k)]
    return len(truth & set(reranked)) / k


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("evaluate")
    vectors, queries = folder / "vectors.npy", folder / "queries.npy"
    np.save(vectors, decaying_vectors(1500, 48, seed=7))
    np.save(queries, decaying_vectors(40, 48, seed=8))
    return vectors, queries


def test_evaluate_end_to_end_writes_json_and_plot(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors_file, queries_file = files
    out, png = tmp_path / "evaluate.json", tmp_path / "evaluate.png"
    status = main([
        "evaluate", "--vectors", str(vectors_file), "--queries", str(queries_file),
        "--prefix", "8,16,24", "--candidates", "10,20,80", "--target-recall", "0.9",
        "--json", str(out), "--plot", str(png),
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "worst 5%" in printed and "worst 1%" in printed

    document = json.loads(out.read_text())
    assert (document["rows"], document["dims"], document["queries"]) == (1500, 48, 40)
    assert {(r["prefix_dims"], r["candidates"]) for r in document["results"]} == {
        (p, c) for p in (8, 16, 24) for c in (10, 20, 80)
    }
    for row in document["results"]:
        assert 0 <= row["worst_1pct"] <= row["worst_5pct"] <= row["recall"] <= 1
    chosen = document["recommended"]
    assert chosen is not None and chosen["recall"] >= 0.9
    reaching = [r for r in document["results"] if r["recall"] >= 0.9]
    assert chosen["prefix_dims"] == min(r["prefix_dims"] for r in reaching)
    assert f"recommended: prefix {chosen['prefix_dims']}" in printed
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000


def test_evaluate_recall_agrees_with_numpy(files: tuple[Path, Path], tmp_path: Path) -> None:
    vectors_file, queries_file = files
    vectors, queries = np.load(vectors_file), np.load(queries_file)
    document = evaluate.evaluate(parse(
        "--vectors", str(vectors_file), "--queries", str(queries_file), "--prefix", "8,16",
        "--candidates", "10,40", "--plot", str(tmp_path / "p.png"),
    ))
    for row in document["results"]:
        per_query = [
            per_query_recall(vectors, q, row["prefix_dims"], row["candidates"], 10)
            for q in queries
        ]
        assert row["recall"] == pytest.approx(float(np.mean(per_query)))
        assert row["worst_5pct"] == pytest.approx(float(np.mean(sorted(per_query)[:2])))
        assert row["worst_1pct"] == pytest.approx(min(per_query))


def test_evaluate_says_when_no_prefix_is_enough(
    files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vectors_file, _ = files
    document = evaluate.evaluate(parse(
        "--vectors", str(vectors_file), "--query-count", "20", "--prefix", "4",
        "--candidates", "10", "--target-recall", "1.0", "--worst", "--plot",
        str(tmp_path / "p.png"),
    ))
    assert document["recommended"] is None
    assert "no prefix size reaches recall 1" in capsys.readouterr().out


def test_evaluate_reads_a_table_without_changing_it(
    database_url: str, engine: Engine, tmp_path: Path
) -> None:
    table = Table("user_docs", MetaData(), Column("id", Integer, primary_key=True),
                  Column("title", String), Column("embedding", VECTOR(32)))
    with engine.begin() as conn:
        table.create(conn)
        copy_vectors(conn, table, "embedding", decaying_vectors(500, 32, seed=9),
                     {"id": range(500), "title": ["t"] * 500})
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    document = evaluate.evaluate(parse(
        "--dsn", database_url, "--table", f"{schema}.user_docs", "--query-count", "25",
        "--prefix", "8,16", "--plot", str(tmp_path / "p.png"),
    ))
    assert (document["rows"], document["dims"], document["queries"]) == (475, 32, 25)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_docs")).scalar_one() == 500
        with pytest.raises(UnknownTableError, match="has no column 'vec'"):
            evaluate.evaluate(parse("--dsn", database_url, "--table",
                                    f"{schema}.user_docs", "--column", "vec"))
    with pytest.raises(UnknownTableError, match="no table 'nope'"):
        evaluate.evaluate(parse("--dsn", database_url, "--table", "nope"))


def test_evaluate_rejects_bad_inputs(files: tuple[Path, Path], tmp_path: Path) -> None:
    vectors_file, _ = files
    cube, narrow = tmp_path / "cube.npy", tmp_path / "narrow.npy"
    np.save(cube, np.zeros((4, 4, 4), dtype=np.float32))
    np.save(narrow, np.ones((5, 8), dtype=np.float32))
    with pytest.raises(VectorFileError, match=r"shape \(4, 4, 4\)"):
        evaluate.evaluate(parse("--vectors", str(cube)))
    with pytest.raises(DimensionMismatchError, match="have 8 dims"):
        evaluate.evaluate(parse("--vectors", str(vectors_file), "--queries", str(narrow)))
    with pytest.raises(TooFewRowsError, match="k=50 is larger than the 40 searched rows"):
        evaluate.evaluate(parse("--rows", "40", "--dims", "16", "--query-count", "10",
                                "--k", "50", "--prefix", "4"))
    with pytest.raises(TooFewRowsError, match="cannot hold out 5 queries from 5 vectors"):
        evaluate.evaluate(parse("--vectors", str(narrow), "--query-count", "5"))
    with pytest.raises(PrefixConfigError, match="prefix size 48"):
        evaluate.evaluate(parse("--vectors", str(vectors_file), "--prefix", "48"))


def test_evaluate_default_prefixes_are_powers_of_two_below_the_dims(
    tmp_path: Path,
) -> None:
    document = evaluate.evaluate(parse(
        "--rows", "300", "--dims", "200", "--query-count", "10", "--candidates", "20",
        "--plot", str(tmp_path / "p.png"),
    ))
    assert sorted({r["prefix_dims"] for r in document["results"]}) == [32, 64, 128]


def test_evaluate_command_reports_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--vectors", str(tmp_path / "missing.npy")]) == 2
    assert "mrl-pg evaluate: error: cannot read" in capsys.readouterr().err


def test_rows_takes_a_seeded_random_sample_of_a_table(engine: Engine) -> None:
    table = Table("sampled_docs", MetaData(), Column("id", Integer, primary_key=True),
                  Column("embedding", VECTOR(4)))
    ids = np.arange(1000, dtype=np.float32)
    with engine.begin() as conn:
        table.create(conn)  # each row's first dimension is its id, rows written in id order
        copy_vectors(conn, table, "embedding",
                     np.column_stack([ids, np.ones((1000, 3), dtype=np.float32)]),
                     {"id": range(1000)})
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()

    def read_ids(seed: int, segments: bool = False) -> set[int]:
        if segments:
            data = from_table_segments(engine, f"{schema}.sampled_docs", "embedding", "id",
                                       max_rows=100, seed=seed)
            return {int(v[0]) for v in data.vectors}
        dataset = from_table(engine, f"{schema}.sampled_docs", "embedding", 10,
                             max_rows=100, seed=seed)
        return {int(v[0]) for v in np.vstack([dataset.vectors, dataset.queries])}

    first = read_ids(seed=1)
    assert len(first) == 100
    assert max(first) >= 500 and first != set(range(100))  # not the first rows on disk
    assert read_ids(seed=1) == first and read_ids(seed=1, segments=True) == first
    assert read_ids(seed=2) != first


def test_rows_takes_a_seeded_random_sample_of_a_file(files: tuple[Path, Path]) -> None:
    vectors_file, _ = files
    everything = np.load(vectors_file)

    def read(seed: int) -> list[int]:
        dataset = from_files(vectors_file, None, 10, max_rows=200, seed=seed)
        rows = np.vstack([dataset.vectors, dataset.queries])
        return sorted(int(np.flatnonzero((everything == row).all(axis=1))[0]) for row in rows)

    first = read(seed=1)
    assert len(set(first)) == 200 and max(first) >= 750
    assert read(seed=1) == first and read(seed=2) != first
