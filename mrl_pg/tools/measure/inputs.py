"""Where the measured vectors come from: the MRL-like generator, ``.npy`` files, or a column
of an existing table (only read, with one ``SELECT``).

Every source gives a :class:`Dataset`: the searched vectors and the queries, both float32
matrices of one width. When no query file is given, queries are held out: drawn at random
from the vectors and removed from the searched set, so no query finds itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector import HalfVector, Vector
from pgvector.psycopg import register_vector
from psycopg import sql
from sqlalchemy import Engine, text

from mrl_pg.errors import NotAVectorColumnError
from mrl_pg.tools.measure.errors import (
    DimensionMismatchError,
    TooFewRowsError,
    UnknownTableError,
    VectorFileError,
)
from mrl_pg.tools.synthetic import Matrix, mrl_like_vectors, queries_near


@dataclass(frozen=True)
class Dataset:
    """Searched vectors (row ``i`` gets id ``i``), queries, and the full column's type."""

    vectors: Matrix
    queries: Matrix
    half: bool
    source: str

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1])

    def check_k(self, k: int) -> None:
        if k > len(self.vectors):
            raise TooFewRowsError(f"k={k} is larger than the {len(self.vectors)} searched rows")


def synthetic(rows: int, dims: int, query_count: int, seed: int = 0) -> Dataset:
    """``rows`` MRL-like vectors and ``query_count`` queries near them."""
    if rows < 1 or dims < 2:
        raise TooFewRowsError(f"need at least 1 row and 2 dims, got {rows} x {dims}")
    vectors = mrl_like_vectors(rows, dims, seed=seed)
    queries = queries_near(vectors, query_count, seed=seed + 1)
    return Dataset(vectors, queries, half=False, source="MRL-like generator")


def from_files(
    vectors_path: Path,
    queries_path: Path | None,
    query_count: int,
    max_rows: int | None = None,
    seed: int = 0,
) -> Dataset:
    """Vectors from one ``.npy`` file (with ``max_rows``, a seeded random sample of that many
    of its rows, in file order); queries from another, or held out from the first."""
    vectors = read_npy(vectors_path)
    if max_rows is not None and max_rows < len(vectors):
        picked = np.random.default_rng(seed).choice(len(vectors), size=max_rows, replace=False)
        vectors = vectors[np.sort(picked)]
    if queries_path is None:
        base, queries = hold_out(vectors, query_count, seed)
        source = f"{vectors_path} ({len(queries)} rows held out as queries)"
        return Dataset(base, queries, half=False, source=source)
    queries = read_npy(queries_path)[:query_count]
    if queries.shape[1] != vectors.shape[1]:
        raise DimensionMismatchError(
            f"queries in {queries_path} have {queries.shape[1]} dims, vectors in "
            f"{vectors_path} have {vectors.shape[1]}"
        )
    return Dataset(vectors, queries, half=False, source=f"{vectors_path}, queries {queries_path}")


def from_table(
    engine: Engine,
    table: str,
    column: str,
    query_count: int,
    max_rows: int | None = None,
    seed: int = 0,
) -> Dataset:
    """The vectors of ``table.column`` (``table`` may be schema-qualified), queries held out;
    with ``max_rows``, a seeded random sample of that many rows (:func:`sampled`)."""
    relation, half = _vector_column(engine, table, column)
    statement = sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(column), sql.SQL(relation), sql.Identifier(column)
    )
    raw: Any = engine.raw_connection()
    try:
        connection = raw.driver_connection
        register_vector(connection)
        with connection.cursor(binary=True) as cursor:
            cursor.execute(sampled(statement, max_rows, seed))
            values = [_as_array(row[0]) for row in cursor]
        connection.rollback()
    finally:
        raw.close()
    if not values:
        raise TooFewRowsError(f"{table}.{column} has no rows to measure")
    vectors = np.stack(values)
    base, queries = hold_out(vectors, query_count, seed)
    source = f"{relation}.{column} ({len(queries)} rows held out as queries)"
    return Dataset(base, queries, half=half, source=source)


@dataclass(frozen=True)
class SegmentedRows:
    """The vectors of a table's column, with each row's value of a segment column as text
    (``NULL`` for a null)."""

    vectors: Matrix
    segments: list[str]
    half: bool
    source: str


def from_table_segments(
    engine: Engine,
    table: str,
    column: str,
    segment: str,
    max_rows: int | None = None,
    seed: int = 0,
) -> SegmentedRows:
    """The vectors of ``table.column`` and the ``segment`` column's value of each row; with
    ``max_rows``, of a seeded random sample of that many rows (:func:`sampled`)."""
    relation, half = _vector_column(engine, table, column)
    if _column_type(engine, table, segment) is None:
        raise UnknownTableError(f"table {relation} has no column {segment!r}")
    statement = sql.SQL("SELECT {}, CAST({} AS text) FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(column), sql.Identifier(segment), sql.SQL(relation),
        sql.Identifier(column),
    )
    raw: Any = engine.raw_connection()
    try:
        connection = raw.driver_connection
        register_vector(connection)
        with connection.cursor(binary=True) as cursor:
            cursor.execute(sampled(statement, max_rows, seed))
            rows = [(_as_array(vector), "NULL" if value is None else value)
                    for vector, value in cursor]
        connection.rollback()
    finally:
        raw.close()
    if not rows:
        raise TooFewRowsError(f"{table}.{column} has no rows to measure")
    return SegmentedRows(
        vectors=np.stack([vector for vector, _ in rows]),
        segments=[value for _, value in rows],
        half=half,
        source=f"{relation}.{column} by {segment}",
    )


def sampled(statement: sql.Composed, max_rows: int | None, seed: int) -> sql.Composed:
    """``statement`` (a ``SELECT`` from one table), limited to a random sample of
    ``max_rows`` rows when given. The rows are ordered by a hash of their physical address
    (partition and ``ctid``) seeded with ``seed``: the same seed picks the same rows of an
    unchanged table, whatever order the scan reads them in, without the server's ``random()``
    state. The server still reads every row; it keeps ``max_rows`` of them (a top-N sort),
    and only those are sent."""
    if max_rows is None:
        return statement
    return statement + sql.SQL(
        " ORDER BY hashtextextended(tableoid::text || ctid::text, {}) LIMIT {}"
    ).format(sql.Literal(seed), sql.Literal(max_rows))


def read_npy(path: Path) -> Matrix:
    """A 2-d float32 matrix of finite numbers from ``path``, or a :class:`VectorFileError`."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VectorFileError(f"cannot read {path} as a .npy array: {exc}") from None
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 2:
        raise VectorFileError(
            f"{path} holds an array of shape {array.shape}; expected (rows, dims) with "
            "at least 1 row and 2 dims"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise VectorFileError(f"{path} holds {array.dtype} values, not numbers")
    matrix: Matrix = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(matrix).all():
        raise VectorFileError(f"{path} holds NaN or infinite values")
    return matrix


def hold_out(vectors: Matrix, count: int, seed: int) -> tuple[Matrix, Matrix]:
    """``count`` random rows as queries, the others as the searched vectors."""
    if not 0 < count < len(vectors):
        raise TooFewRowsError(
            f"cannot hold out {count} queries from {len(vectors)} vectors; need more rows "
            "than queries (or give a query file)"
        )
    picked = np.random.default_rng(seed).choice(len(vectors), size=count, replace=False)
    keep = np.ones(len(vectors), dtype=bool)
    keep[picked] = False
    return vectors[keep], vectors[picked]


def _vector_column(engine: Engine, table: str, column: str) -> tuple[str, bool]:
    """The quoted relation name and whether the column is ``halfvec``."""
    with engine.connect() as conn:
        relation = conn.execute(
            text("SELECT CAST(to_regclass(:name) AS text)"), {"name": table}
        ).scalar_one_or_none()
        if relation is None:
            raise UnknownTableError(f"no table {table!r} in the database")
    type_name = _column_type(engine, table, column)
    if type_name is None:
        raise UnknownTableError(f"table {relation} has no column {column!r}")
    if type_name.split("(")[0] not in ("vector", "halfvec"):
        raise NotAVectorColumnError(
            f"column {column!r} of {relation} is {type_name}, not a pgvector vector or halfvec"
        )
    return str(relation), type_name.startswith("halfvec")


def _column_type(engine: Engine, table: str, column: str) -> str | None:
    """The SQL type of ``table.column``, None if the table has no such column."""
    with engine.connect() as conn:
        type_name = conn.execute(
            text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(:name) AND attname = :column "
                "AND attnum > 0 AND NOT attisdropped"
            ),
            {"name": table, "column": column},
        ).scalar_one_or_none()
    return None if type_name is None else str(type_name)


def _as_array(value: Any) -> npt.NDArray[np.float32]:
    if isinstance(value, (Vector, HalfVector)):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)
