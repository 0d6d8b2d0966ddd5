"""Bulk loading by binary COPY: numpy arrays and iterables of rows, vector and halfvec
columns, exact values read back, generated prefixes filled in by the database."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pgvector import HalfVector, Vector
from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, select

from mrl_pg import (
    ConnectionClosedError,
    LoadDataError,
    MissingDependencyError,
    MRLError,
    NotAVectorColumnError,
    UnknownColumnError,
    add_prefix_column,
)
from mrl_pg.load import CHUNK_ROWS, copy_rows, copy_vectors
from mrl_pg.tools.synthetic import mrl_like_vectors

DIMS = 16


def make_table(name: str, half: bool) -> Table:
    table = Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("label", String(20)),
        Column("embedding", HALFVEC(DIMS) if half else VECTOR(DIMS)),
    )
    add_prefix_column(table, "embedding", 4)
    return table


@pytest.fixture
def tables(engine: Engine) -> Iterator[tuple[Table, Table]]:
    """The two tables, without their prefix indexes: these tests are about COPY, and an HNSW
    index would make each copied row a slow index insertion."""
    pair = (make_table("full_vectors", half=False), make_table("half_vectors", half=True))
    with engine.begin() as conn:
        for table in pair:
            table.create(conn)
            for index in table.indexes:
                index.drop(conn)
    yield pair


def as_array(value: Any) -> Any:
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, np.float32)


def read_back(engine: Engine, table: Table) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(table).order_by(table.c.id)).all())


@pytest.mark.parametrize("half", [False, True], ids=["vector", "halfvec"])
def test_copy_vectors_from_a_numpy_array(
    engine: Engine, tables: tuple[Table, Table], half: bool
) -> None:
    table = tables[half]
    rows = CHUNK_ROWS + 17  # more than one chunk
    vectors = mrl_like_vectors(rows, DIMS, seed=3)
    with engine.begin() as conn:
        written = copy_vectors(
            conn, table, "embedding", vectors,
            {"id": range(rows), "label": [f"row {i}" for i in range(rows)]},
        )
    assert written == rows
    back = read_back(engine, table)
    stored = np.array([as_array(r.embedding) for r in back])
    expected = vectors.astype(np.float16).astype(np.float32) if half else vectors
    np.testing.assert_array_equal(stored, expected)
    assert back[-1].label == f"row {rows - 1}"
    prefix = as_array(back[5].embedding_4)
    np.testing.assert_allclose(prefix, expected[5, :4], rtol=1e-3)


@pytest.mark.parametrize("half", [False, True], ids=["vector", "halfvec"])
def test_copy_rows_from_an_iterable(
    engine: Engine, tables: tuple[Table, Table], half: bool
) -> None:
    table = tables[half]
    vectors = mrl_like_vectors(50, DIMS, seed=4)
    kinds = [lambda v: v, lambda v: v.tolist(), Vector, HalfVector]

    def rows() -> Iterator[tuple[Any, ...]]:  # a generator: never a list in memory
        for i, vector in enumerate(vectors):
            yield (f"r{i}", kinds[i % len(kinds)](vector), i)

    with engine.begin() as conn:
        written = copy_rows(conn, table, ["label", "embedding", "id"], rows(), progress=False)
    assert written == 50
    back = read_back(engine, table)
    assert [r.label for r in back] == [f"r{i}" for i in range(50)]
    stored = np.array([as_array(r.embedding) for r in back])
    expected = vectors.copy()
    expected[3::4] = expected[3::4].astype(np.float16)  # given as HalfVector
    if half:
        expected = expected.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(stored, expected)


@pytest.mark.parametrize(
    ("column", "vectors", "others", "error", "builtin", "message"),
    [
        ("embedding", np.ones((2, 3)), {"id": [1, 2]}, LoadDataError, ValueError,
         "vectors have 3 dimensions, column 'embedding' has 16"),
        ("embedding", np.ones((2, DIMS)), {"id": [1]}, LoadDataError, ValueError,
         "column 'id' has 1 values for 2 vectors"),
        ("embedding", np.ones(DIMS), {}, LoadDataError, ValueError,
         r"expected a 2-d array of vectors, got shape \(16,\)"),
        ("label", np.ones((1, DIMS)), {}, NotAVectorColumnError, TypeError,
         "column 'label' is String\\(length=20\\), not a pgvector VECTOR or HALFVEC"),
        ("vector", np.ones((1, DIMS)), {}, UnknownColumnError, KeyError,
         "^table 'full_vectors' has no column 'vector'$"),
    ],
    ids=["dimensions", "lengths", "shape", "not-a-vector", "unknown-column"],
)
def test_data_that_does_not_fit_is_refused_before_any_row(
    engine: Engine,
    tables: tuple[Table, Table],
    column: str,
    vectors: Any,
    others: dict[str, list[int]],
    error: type[Exception],
    builtin: type[Exception],
    message: str,
) -> None:
    table = tables[0]
    with engine.begin() as conn, pytest.raises(error, match=message) as raised:
        copy_vectors(conn, table, column, vectors, others)
    assert isinstance(raised.value, MRLError) and isinstance(raised.value, builtin)
    assert read_back(engine, table) == []


def test_an_unknown_column_in_copy_rows(engine: Engine, tables: tuple[Table, Table]) -> None:
    with engine.begin() as conn, pytest.raises(UnknownColumnError, match="has no column 'tag'"):
        copy_rows(conn, tables[0], ["id", "tag"], [(1, "x")])


def test_an_invalidated_connection_is_refused(
    engine: Engine, tables: tuple[Table, Table]
) -> None:
    with engine.connect() as conn:
        conn.connection.invalidate()
        with pytest.raises(ConnectionClosedError, match="the connection is closed"):
            copy_vectors(conn, tables[0], "embedding", np.ones((1, DIMS)), {"id": [1]})


def test_progress_true_without_tqdm(
    engine: Engine, tables: tuple[Table, Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    with engine.begin() as conn, pytest.raises(
        MissingDependencyError, match="progress=True needs tqdm"
    ) as raised:
        copy_vectors(conn, tables[0], "embedding", np.ones((1, DIMS)), {"id": [1]}, progress=True)
    assert isinstance(raised.value, ImportError)


def test_progress_bar_when_asked(
    engine: Engine, tables: tuple[Table, Table], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    with engine.begin() as conn:
        copy_vectors(
            conn, tables[0], "embedding", np.ones((10, DIMS)), {"id": range(10)}, progress=True
        )
    assert "COPY full_vectors" in capsys.readouterr().err
