"""``mrl-pg bench`` end to end on small data, checked against an independent numpy search."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, create_engine, text

from mrl_pg.errors import NotAVectorColumnError, PrefixConfigError, SearchParameterError
from mrl_pg.load import copy_vectors
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.tools import bench
from mrl_pg.tools.cli import main
from mrl_pg.tools.measure import methods
from mrl_pg.tools.measure.errors import (
    DimensionMismatchError,
    TooFewRowsError,
    UnknownTableError,
    VectorFileError,
)
from mrl_pg.tools.measure.inputs import Dataset
from mrl_pg.tools.measure.scratch import HNSWParameters, ScratchTable
from tests.data import decaying_vectors

JSON_KEYS = {
    "method", "prefix_dims", "storage", "candidates", "ef_search", "k", "recall", "qps",
    "p50_ms", "p99_ms", "index_bytes", "build_s", "server_ms", "qps_repeats",
}
SETUP_KEYS = {
    "source", "rows", "dims", "queries", "k", "distance", "repeats", "explain_sample",
    "shared_buffers_bytes", "table_bytes", "index_bytes", "data_fits_shared_buffers",
    "load_average_start", "load_average_end",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"




def cosine_top(vectors: npt.NDArray[np.float32], query: npt.NDArray[np.float32], count: int
               ) -> npt.NDArray[np.int64]:
    similarity = vectors @ query / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(query))
    return np.argsort(-similarity.astype(np.float64), kind="stable")[:count]


def two_stage_recall(vectors: npt.NDArray[np.float32], queries: npt.NDArray[np.float32],
                     prefix: int, candidates: int, k: int) -> float:
    """Recall@k of an exact prefix shortlist reranked by the full cosine distance."""
    hits = 0
    for query in queries:
        truth = set(cosine_top(vectors, query, k).tolist())
        shortlist = cosine_top(vectors[:, :prefix], query[:prefix], candidates)
        reranked = shortlist[cosine_top(vectors[shortlist], query, k)]
        hits += len(truth & set(reranked.tolist()))
    return hits / (k * len(queries))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.configure(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bench")
    vectors, queries = folder / "vectors.npy", folder / "queries.npy"
    np.save(vectors, decaying_vectors(1000, 64, seed=3))
    np.save(queries, decaying_vectors(30, 64, seed=4))
    return vectors, queries


def test_bench_end_to_end_writes_json_and_plot(
    database_url: str, files: tuple[Path, Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vectors_file, queries_file = files
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    status = main([
        "bench", "--dsn", database_url, "--vectors", str(vectors_file),
        "--queries", str(queries_file), "--prefix", "16,32", "--candidates", "10,60",
        "--ef-search", "40,200", "--storage", "halfvec,vector", "--json", str(out),
        "--plot", str(png), "--repeats", "2",
    ])
    assert status == 0
    printed = capsys.readouterr().out
    assert "At matched recall, two-stage / full-dimension HNSW:" in printed
    assert "mrl_search / handwritten" in printed
    assert "server ms" in printed and "shared_buffers" in printed
    turns = [line.split(" (repeat")[0].strip() for line in printed.splitlines()
             if "(repeat " in line]
    first, second = turns[: len(turns) // 2], turns[len(turns) // 2:]
    assert first[0] == "exact" and second == first[::-1], "every other repeat runs in reverse"

    document = json.loads(out.read_text())
    setup, results = document["setup"], document["results"]
    assert set(setup) == SETUP_KEYS
    assert setup["repeats"] == 2 and setup["rows"] == 1000 and setup["queries"] == 30
    assert setup["shared_buffers_bytes"] > 0
    assert setup["table_bytes"] > 0 and setup["index_bytes"] > 0
    # 1,000 x 64 float4 and a few small indexes fit in any shared_buffers PostgreSQL starts with
    assert setup["data_fits_shared_buffers"] is True
    assert all(set(row) == JSON_KEYS for row in results)
    methods = [row["method"] for row in results]
    assert methods.count("exact") == 1
    assert methods.count("full_hnsw") == 2
    assert methods.count("handwritten") == methods.count("mrl_search") == 2 * 2 * 2
    for row in results:
        assert row["k"] == 10
        assert row["qps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert len(row["qps_repeats"]) == 2 and row["qps"] == pytest.approx(
            sum(row["qps_repeats"]) / 2
        )
        assert row["server_ms"] > 0
        if row["method"] == "exact":
            assert row["index_bytes"] == 0 and row["prefix_dims"] is None
        else:
            assert row["index_bytes"] > 0 and row["build_s"] > 0
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000


def test_bench_recall_agrees_with_numpy(
    database_url: str, files: tuple[Path, Path], tmp_path: Path
) -> None:
    vectors_file, queries_file = files
    vectors, queries = np.load(vectors_file), np.load(queries_file)
    results = bench.bench(parse(
        "--dsn", database_url, "--vectors", str(vectors_file), "--queries", str(queries_file),
        "--prefix", "16", "--candidates", "10,60", "--ef-search", "400", "--storage", "vector",
    ))
    by_key = {(r.method, r.candidates): r for r in results}
    assert by_key["exact", None].recall == 1.0
    assert by_key["full_hnsw", None].recall >= 0.98
    for candidates in (10, 60):
        expected = two_stage_recall(vectors, queries, 16, candidates, 10)
        for method in ("handwritten", "mrl_search"):
            assert by_key[method, candidates].recall == pytest.approx(expected, abs=0.03)
        assert by_key["mrl_search", candidates].recall == pytest.approx(
            by_key["handwritten", candidates].recall, abs=0.01
        )


@pytest.fixture
def user_table(engine: Engine) -> str:
    table = Table("user_docs", MetaData(), Column("id", Integer, primary_key=True),
                  Column("title", String), Column("embedding", VECTOR(32)))
    with engine.begin() as conn:
        table.create(conn)
        copy_vectors(conn, table, "embedding", decaying_vectors(600, 32, seed=5),
                     {"id": range(600), "title": ["t"] * 600})
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    return f"{schema}.user_docs"


def _shape(engine: Engine, qualified: str) -> tuple[int, list[str], list[str]]:
    schema, name = qualified.split(".")
    with engine.connect() as conn:
        rows = conn.execute(text(f"SELECT count(*) FROM {qualified}")).scalar_one()
        columns = conn.execute(text(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = :s AND table_name = :t ORDER BY 1"), {"s": schema, "t": name}
        ).scalars().all()
        indexes = conn.execute(text(
            "SELECT indexname FROM pg_indexes WHERE schemaname = :s ORDER BY 1"), {"s": schema}
        ).scalars().all()
    return rows, list(columns), list(indexes)


def test_bench_on_an_existing_table_leaves_it_alone(
    database_url: str, engine: Engine, user_table: str, tmp_path: Path
) -> None:
    before = _shape(engine, user_table)
    results = bench.bench(parse(
        "--dsn", database_url, "--table", user_table, "--column", "embedding",
        "--query-count", "20", "--prefix", "8", "--candidates", "20", "--ef-search", "100",
    ))
    assert {r.method for r in results} == {"exact", "full_hnsw", "handwritten", "mrl_search"}
    assert next(r for r in results if r.method == "exact").recall == 1.0
    assert _shape(engine, user_table) == before
    scratch = create_engine(database_url)
    with scratch.connect() as conn:
        left = conn.execute(text(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'mrl_pg_bench_%'")).scalar_one()
    scratch.dispose()
    assert left == 0


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (["--rows", "5", "--dims", "16", "--query-count", "2", "--prefix", "4"],
         TooFewRowsError, "k=10 is larger than the 5 searched rows"),
        (["--rows", "50", "--dims", "16", "--prefix", "16"], PrefixConfigError,
         "must be smaller than the full vector's 16 dimensions"),
        (["--rows", "50", "--dims", "16", "--prefix", "4", "--candidates", "5"],
         SearchParameterError, "candidates (5) must be at least k (10)"),
    ],
)
def test_bench_rejects_bad_sizes(
    database_url: str, argv: list[str], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        bench.bench(parse("--dsn", database_url, *argv))


def test_bench_rejects_bad_files(tmp_path: Path) -> None:
    flat, wide, narrow = tmp_path / "flat.npy", tmp_path / "wide.npy", tmp_path / "narrow.npy"
    np.save(flat, np.zeros(10, dtype=np.float32))
    np.save(wide, np.ones((100, 16), dtype=np.float32))
    np.save(narrow, np.ones((5, 8), dtype=np.float32))
    with pytest.raises(VectorFileError, match=r"shape \(10,\)"):
        bench.bench(parse("--vectors", str(flat)))
    with pytest.raises(VectorFileError, match="cannot read"):
        bench.bench(parse("--vectors", str(tmp_path / "missing.npy")))
    with pytest.raises(DimensionMismatchError, match=r"have 8 dims, vectors .* have 16"):
        bench.bench(parse("--vectors", str(wide), "--queries", str(narrow)))


def test_bench_rejects_unknown_tables_and_columns(
    database_url: str, user_table: str
) -> None:
    with pytest.raises(UnknownTableError, match="no table 'no_such_table'"):
        bench.bench(parse("--dsn", database_url, "--table", "no_such_table"))
    with pytest.raises(UnknownTableError, match="has no column 'missing'"):
        bench.bench(parse("--dsn", database_url, "--table", user_table, "--column", "missing"))
    with pytest.raises(NotAVectorColumnError, match="title"):
        bench.bench(parse("--dsn", database_url, "--table", user_table, "--column", "title"))


def test_bench_command_reports_errors_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "flat.npy", np.zeros(3))
    assert main(["bench", "--vectors", str(tmp_path / "flat.npy")]) == 2
    assert "mrl-pg bench: error:" in capsys.readouterr().err


def test_hand_written_searches_make_their_settings_inside_their_one_statement(
    engine: Engine, files: tuple[Path, Path]
) -> None:
    vectors_file, queries_file = files
    dataset = Dataset(np.load(vectors_file), np.load(queries_file), False, "test")
    scratch = ScratchTable(engine, dataset, [(16, Storage.HALFVEC)], Distance.COSINE,
                           HNSWParameters())
    scratch.create()
    try:
        scratch.build(scratch.full_index())
        # a table this small is scanned rather than searched by its index unless told
        with methods.psycopg_connection(engine, (("enable_seqscan", "off"),)) as raw:
            query = dataset.queries[0]
            # pgvector returns at most ef_search rows: the statement's setting reached the scan
            assert len(methods.full_hnsw(raw, scratch, 10, ef_search=1).search(query)) == 1
            assert len(methods.full_hnsw(raw, scratch, 10, ef_search=100).search(query)) == 10
            assert raw.autocommit
            # the settings ended with the statement: nothing is left in the session
            assert raw.execute("SELECT current_setting('hnsw.ef_search')").fetchone() == ("40",)
        with methods.psycopg_connection(engine, methods.EXACT_SESSION) as exact_conn:
            found = methods.exact(exact_conn, scratch, 10).search(query)
            assert found == cosine_top(dataset.vectors, query, 10).tolist()
    finally:
        scratch.drop()
