"""The query vector: checked before it reaches the database, then bound once.

With psycopg 3 the vector travels as ``vector_recv``/``halfvec_recv`` bytes (a 4-byte header,
then big-endian floats) with an unspecified type that PostgreSQL infers from the surrounding
``CAST``: no float formatting or parsing on either side. Other drivers get pgvector's text form.
The binary dumper is registered on each psycopg connection the first time a search runs on it
(:func:`prepare_connection`), never process-wide, so no other code's adaptation changes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from pgvector import HalfVector, Vector
from pgvector.sqlalchemy import HALFVEC, VECTOR
from psycopg.adapt import Dumper
from psycopg.pq import Format
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine, UserDefinedType

from mrl_pg.errors import QueryVectorError
from mrl_pg.prefix.spec import FullVector

QueryLike: TypeAlias = Sequence[float] | npt.NDArray[Any] | Vector | HalfVector

#: Largest finite half-precision value; larger values become infinity in a ``halfvec``.
HALF_MAX = 65504.0


def as_query_array(query: QueryLike, full: FullVector) -> npt.NDArray[np.float32]:
    """``query`` as a float32 array of ``full.dims`` finite values, or a QueryVectorError."""
    if isinstance(query, (Vector, HalfVector)):
        query = query.to_numpy()
    try:
        array = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise QueryVectorError(f"query vector is not a sequence of numbers: {exc}") from None
    if array.ndim != 1:
        raise QueryVectorError(
            f"query vector must be one-dimensional, got an array of shape {array.shape}"
        )
    if array.shape[0] != full.dims:
        raise QueryVectorError(
            f"query vector has {array.shape[0]} dimensions, the column has {full.dims}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise QueryVectorError(
            f"query vector holds {array[bad]} at index {bad}; NaN and infinity cannot be searched"
        )
    if full.half and np.abs(array).max(initial=0.0) > HALF_MAX:
        raise QueryVectorError(
            f"query vector has values beyond ±{HALF_MAX:g}, which a halfvec cannot hold"
        )
    return array


_HEADER = struct.Struct(">HH")


class BinaryQueryVector:
    """A query vector ready for psycopg's binary dumper."""

    __slots__ = ("payload",)

    def __init__(self, values: npt.NDArray[np.float32], half: bool) -> None:
        header = _HEADER.pack(len(values), 0)  # dimensions, then an unused word
        self.payload = header + values.astype(">f2" if half else ">f4").tobytes()


class BinaryQueryVectorDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: BinaryQueryVector) -> bytes:
        return obj.payload


_DUMPER_KEY = "mrl_pg_binary_query_vector"


def prepare_connection(conn: Connection) -> None:
    """Teach a psycopg connection to send :class:`BinaryQueryVector`, once per DBAPI
    connection (``Connection.info`` lives as long as it does)."""
    if conn.dialect.driver != "psycopg" or _DUMPER_KEY in conn.info:
        return
    conn.connection.dbapi_connection.adapters.register_dumper(  # type: ignore[union-attr]
        BinaryQueryVector, BinaryQueryVectorDumper
    )
    conn.info[_DUMPER_KEY] = True


class QueryVectorType(UserDefinedType[Any]):
    """``vector(n)``/``halfvec(n)`` for the query parameter, bound in binary with psycopg."""

    cache_ok = True

    def __init__(self, full: FullVector) -> None:
        self.full = full

    def get_col_spec(self, **kw: Any) -> str:
        return f"{'HALFVEC' if self.full.half else 'VECTOR'}({self.full.dims})"

    def _pgvector_type(self) -> TypeEngine[Any]:
        return HALFVEC(self.full.dims) if self.full.half else VECTOR(self.full.dims)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        if dialect.driver != "psycopg":
            return self._pgvector_type().bind_processor(dialect)
        half = self.full.half

        def process(value: Any) -> BinaryQueryVector | None:
            return None if value is None else BinaryQueryVector(value, half)

        return process

    def literal_processor(self, dialect: Dialect) -> Callable[[Any], str] | None:
        return self._pgvector_type().literal_processor(dialect)
