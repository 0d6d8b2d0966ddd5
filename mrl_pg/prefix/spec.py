"""What a prefix is: its size, distance, storage and HNSW parameters, and the SQL they imply.

A :class:`PrefixSpec` is pure data plus validation. It knows how to turn a full vector (a
column, or the query parameter) into the prefix value, so the generated column, the index and
the query all use one expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
from sqlalchemy import ColumnElement, Float, Integer, cast, func, literal_column
from sqlalchemy.types import TypeEngine

from mrl_pg.errors import (
    IndexLimitError,
    NotAVectorColumnError,
    PrefixConfigError,
    UnknownDistanceError,
    UnknownStorageError,
)


class Distance(str, Enum):
    """Distance used for search, named after pgvector's operators."""

    COSINE = "cosine"
    INNER_PRODUCT = "inner_product"
    L2 = "l2"

    @property
    def operator(self) -> str:
        return {"cosine": "<=>", "inner_product": "<#>", "l2": "<->"}[self.value]

    @property
    def opclass_suffix(self) -> str:
        return {"cosine": "cosine_ops", "inner_product": "ip_ops", "l2": "l2_ops"}[self.value]

    @classmethod
    def parse(cls, value: Distance | str) -> Distance:
        if isinstance(value, Distance):
            return value
        name = str(value).strip().lower()
        aliased = _DISTANCE_ALIASES.get(name, name)
        try:
            return cls(aliased)
        except ValueError:
            known = ", ".join(d.value for d in cls)
            raise UnknownDistanceError(
                f"unknown distance {value!r}; expected one of: {known}"
            ) from None


_DISTANCE_ALIASES = {
    "cos": "cosine",
    "ip": "inner_product",
    "dot": "inner_product",
    "max_inner_product": "inner_product",
    "euclidean": "l2",
}


class Storage(str, Enum):
    """How the prefix is stored and indexed."""

    VECTOR = "vector"
    HALFVEC = "halfvec"
    BIT = "bit"

    @property
    def index_limit(self) -> int:
        """Largest dimension pgvector's HNSW index accepts for this type."""
        return {"vector": 2000, "halfvec": 4000, "bit": 64000}[self.value]

    @classmethod
    def parse(cls, value: Storage | str) -> Storage:
        if isinstance(value, Storage):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            known = ", ".join(s.value for s in cls)
            raise UnknownStorageError(
                f"unknown prefix storage {value!r}; expected one of: {known}"
            ) from None


#: pgvector's HNSW parameter bounds (src/hnsw.h).
HNSW_M_RANGE = (2, 100)
HNSW_EF_CONSTRUCTION_RANGE = (4, 1000)
#: Most dimensions a ``vector`` or ``halfvec`` value can have.
MAX_VECTOR_DIMS = 16000


@dataclass(frozen=True)
class FullVector:
    """The user's full-dimension column type: ``vector(n)`` or ``halfvec(n)``."""

    dims: int
    half: bool

    @classmethod
    def from_type(cls, type_: TypeEngine[Any], column_name: str) -> FullVector:
        if isinstance(type_, (VECTOR, HALFVEC)) and isinstance(type_.dim, int):
            if not 1 <= type_.dim <= MAX_VECTOR_DIMS:
                raise NotAVectorColumnError(
                    f"column {column_name!r} is declared with {type_.dim} dimensions; pgvector "
                    f"vectors have 1 to {MAX_VECTOR_DIMS}"
                )
            return cls(dims=type_.dim, half=isinstance(type_, HALFVEC))
        if isinstance(type_, (VECTOR, HALFVEC)):
            raise NotAVectorColumnError(
                f"column {column_name!r} has no fixed dimension; declare it as VECTOR(n) or "
                "HALFVEC(n) so the prefix size can be checked"
            )
        raise NotAVectorColumnError(
            f"column {column_name!r} is {type_!r}, not a pgvector VECTOR(n) or HALFVEC(n) column"
        )

    def sql_type(self) -> TypeEngine[Any]:
        return HALFVEC(self.dims) if self.half else VECTOR(self.dims)


@dataclass(frozen=True)
class PrefixSpec:
    """A validated prefix declaration over a full vector of ``full.dims`` dimensions."""

    dims: int
    full: FullVector
    distance: Distance = Distance.COSINE
    storage: Storage = Storage.HALFVEC
    m: int = 16
    ef_construction: int = 64

    @classmethod
    def create(
        cls,
        dims: int,
        full: FullVector,
        *,
        distance: Distance | str = Distance.COSINE,
        storage: Storage | str = Storage.HALFVEC,
        m: int = 16,
        ef_construction: int = 64,
    ) -> PrefixSpec:
        spec = cls(
            dims=dims,
            full=full,
            distance=Distance.parse(distance),
            storage=Storage.parse(storage),
            m=m,
            ef_construction=ef_construction,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if isinstance(self.dims, bool) or not isinstance(self.dims, int):
            raise PrefixConfigError(f"prefix size must be an integer, got {self.dims!r}")
        if self.dims <= 0:
            raise PrefixConfigError(f"prefix size must be positive, got {self.dims}")
        if self.dims >= self.full.dims:
            raise PrefixConfigError(
                f"prefix size {self.dims} must be smaller than the full vector's "
                f"{self.full.dims} dimensions"
            )
        if self.dims > self.storage.index_limit:
            raise IndexLimitError(
                f"a {self.dims}-dim {self.storage.value} prefix is over pgvector's HNSW limit of "
                f"{self.storage.index_limit} dims for {self.storage.value}; use a smaller prefix"
                + (" or halfvec storage" if self.storage is Storage.VECTOR else "")
            )
        _check_range("HNSW m", self.m, HNSW_M_RANGE)
        _check_range("HNSW ef_construction", self.ef_construction, HNSW_EF_CONSTRUCTION_RANGE)
        if self.ef_construction < 2 * self.m:
            raise PrefixConfigError(
                f"HNSW ef_construction ({self.ef_construction}) must be at least 2 * m "
                f"({2 * self.m})"
            )

    # -- SQL -----------------------------------------------------------------------------

    def sql_type(self) -> TypeEngine[Any]:
        if self.storage is Storage.BIT:
            return BIT(self.dims)
        return HALFVEC(self.dims) if self.storage is Storage.HALFVEC else VECTOR(self.dims)

    def expression(self, full_vector: Any) -> ColumnElement[Any]:
        """The prefix of ``full_vector`` (a column or a vector-typed expression).

        Its numbers are SQL literals, never bound values: PostgreSQL serves an ``ORDER BY``
        from an index on an expression only when the two expressions are the same, and a
        bound ``subvector(..., $2, $3)`` in a generic plan is not ``subvector(..., 1, 256)``.
        """
        head = func.subvector(full_vector, _integer(1), _integer(self.dims))
        if self.storage is Storage.BIT:
            return cast(func.binary_quantize(head), self.sql_type())
        if self.distance is Distance.INNER_PRODUCT:
            head = func.l2_normalize(head)
        return cast(head, self.sql_type())

    @property
    def index_operator(self) -> str:
        """The operator the HNSW index on the prefix answers."""
        return "<~>" if self.storage is Storage.BIT else self.distance.operator

    @property
    def opclass(self) -> str:
        if self.storage is Storage.BIT:
            return "bit_hamming_ops"
        return f"{self.storage.value}_{self.distance.opclass_suffix}"

    def index_distance(self, prefix: Any, query_prefix: Any) -> ColumnElement[float]:
        """``prefix <op> query_prefix``: the bare operator the index can serve."""
        result: ColumnElement[float] = prefix.op(self.index_operator, return_type=Float)(
            query_prefix
        )
        return result

    def full_distance(self, full_vector: Any, query: Any) -> ColumnElement[float]:
        """Exact distance on the full vectors, used for the final ordering."""
        result: ColumnElement[float] = full_vector.op(self.distance.operator, return_type=Float)(
            query
        )
        return result


def _integer(value: int) -> ColumnElement[int]:
    return literal_column(str(int(value)), Integer)


def _check_range(what: str, value: int, bounds: tuple[int, int]) -> None:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise PrefixConfigError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
