"""``mrl-pg evaluate --segment``: recall per value of a column, checked against an independent
numpy search, and the degraded segment found first."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, text

from mrl_pg.load import copy_vectors
from mrl_pg.prefix.spec import Distance
from mrl_pg.tools import evaluate
from mrl_pg.tools.cli import main
from mrl_pg.tools.measure.errors import SegmentOptionError, UnknownTableError
from mrl_pg.tools.measure.inputs import SegmentedRows
from mrl_pg.tools.measure.segment_recall import segment_recall
from mrl_pg.tools.synthetic import normalize
from tests.data import decaying_vectors
from tests.test_evaluate import PNG_MAGIC, per_query_recall

ROWS, DIMS, TENANTS = 1_200, 48, 4
#: The tenant whose first 16 dimensions are noise: its signal lies in the later dimensions.
DEGRADED = "t2"


def tenant_data() -> tuple[npt.NDArray[np.float32], list[str]]:
    vectors = decaying_vectors(ROWS, DIMS, seed=21)
    tenants = [f"t{i % TENANTS}" for i in range(ROWS)]
    rows = np.array([t == DEGRADED for t in tenants])
    noise = np.random.default_rng(22).standard_normal((int(rows.sum()), 16))
    vectors[rows, :16] = noise * np.abs(vectors[rows, :16]).mean()
    return normalize(vectors), tenants


VECTORS, TENANT = tenant_data()


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    evaluate.configure(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def table_name(engine: Engine) -> str:
    table = Table("tenant_docs", MetaData(), Column("id", Integer, primary_key=True),
                  Column("tenant", String), Column("embedding", VECTOR(DIMS)))
    with engine.begin() as conn:
        table.create(conn)
        copy_vectors(conn, table, "embedding", VECTORS, {"id": range(ROWS), "tenant": TENANT})
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    return f"{schema}.tenant_docs"


@pytest.mark.parametrize("across", [False, True])
def test_segment_recall_agrees_with_numpy(across: bool) -> None:
    data = SegmentedRows(VECTORS, TENANT, half=False, source="test")
    segments, too_small = segment_recall(data, [8, 16], [10, 40], 10, Distance.COSINE,
                                         query_count=6, seed=3, across=across)
    assert too_small == []
    assert sorted(s.segment for s in segments) == [f"t{i}" for i in range(TENANTS)]
    held = np.concatenate([s.query_rows for s in segments])
    labels = np.array(TENANT)
    for segment in segments:
        assert len(segment.query_rows) == segment.queries == 6
        assert set(labels[segment.query_rows]) == {segment.segment}
        keep = np.ones(ROWS, dtype=bool)
        keep[held] = False
        if not across:
            keep &= labels == segment.segment
        assert segment.rows == keep.sum()
        for prefix in (8, 16):
            for candidates in (10, 40):
                expected = np.mean([
                    per_query_recall(VECTORS[keep], VECTORS[row], prefix, candidates, 10)
                    for row in segment.query_rows
                ])
                assert segment.recall_at(prefix, candidates) == pytest.approx(expected)


def test_evaluate_segment_finds_the_degraded_tenant(
    database_url: str, table_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, png = tmp_path / "segments.json", tmp_path / "segments.png"
    status = main([
        "evaluate", "--dsn", database_url, "--table", table_name, "--segment", "tenant",
        "--prefix", "8,16", "--candidates", "20,40", "--query-count", "25",
        "--target-recall", "0.9", "--json", str(out), "--plot", str(png),
    ])
    assert status == 0
    printed = capsys.readouterr().out
    document = json.loads(out.read_text())
    ranked = document["segments"]
    assert ranked[0]["segment"] == DEGRADED
    assert [s["recall"] for s in ranked] == sorted(s["recall"] for s in ranked)
    at = document["ranked_at"]
    assert ranked[0]["recall"] < 0.9 <= min(s["recall"] for s in ranked[1:])
    assert f"1 of {TENANTS} segments below the target at prefix {at['prefix_dims']}" in printed
    assert f"tenant {DEGRADED}: recall@10 by prefix" in printed
    for segment in ranked:
        assert segment["queries"] == 25 and segment["rows"] == ROWS // TENANTS - 25
        assert {(r["prefix_dims"], r["candidates"]) for r in segment["results"]} == {
            (p, c) for p in (8, 16) for c in (20, 40)
        }
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000


def test_evaluate_segment_without_matplotlib_says_so(
    database_url: str, table_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    out = tmp_path / "segments.json"
    status = main([
        "evaluate", "--dsn", database_url, "--table", table_name, "--segment", "tenant",
        "--prefix", "8", "--candidates", "20", "--query-count", "5", "--json", str(out),
    ])
    assert status == 2
    captured = capsys.readouterr()
    assert "plots need matplotlib: pip install 'mrl-pg[plot]'" in captured.err
    assert "Traceback" not in captured.err
    assert "segments below the target" in captured.out and out.exists()  # figures first


def test_evaluate_segment_refuses_bad_inputs(database_url: str, table_name: str) -> None:
    with pytest.raises(SegmentOptionError, match="give --table"):
        evaluate.evaluate(parse("--segment", "tenant"))
    with pytest.raises(SegmentOptionError, match="takes no --queries file"):
        evaluate.evaluate(parse("--dsn", database_url, "--table", table_name, "--segment",
                                "tenant", "--queries", "q.npy"))
    with pytest.raises(UnknownTableError, match="has no column 'language'"):
        evaluate.evaluate(parse("--dsn", database_url, "--table", table_name, "--segment",
                                "language"))
