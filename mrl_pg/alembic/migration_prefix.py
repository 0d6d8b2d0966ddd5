"""A prefix as migrations see it: names and numbers only, so it renders into a migration file."""

from __future__ import annotations

from dataclasses import dataclass

from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import column

from mrl_pg.prefix.declare import Prefix
from mrl_pg.prefix.names import default_index_name
from mrl_pg.prefix.spec import Distance, FullVector, PrefixSpec, Storage


@dataclass(frozen=True)
class MRLPrefix:
    """One prefix of a table: the first ``dims`` dimensions of ``full_column``
    (``full_type(full_dims)``) with an HNSW index named ``index_name`` (default
    ``ix_<table>_<column>_hnsw``). A stored prefix is a column named ``column``; an index-only
    one (``stored=False``) is only the index, on the prefix expression, and ``column`` is the
    name it is declared under."""

    column: str
    full_column: str
    full_dims: int
    dims: int
    distance: str = Distance.COSINE.value
    storage: str = Storage.HALFVEC.value
    m: int = 16
    ef_construction: int = 64
    full_type: str = "vector"
    index_name: str | None = None
    stored: bool = True

    def spec(self) -> PrefixSpec:
        """The validated declaration; raises mrl_pg's typed errors for bad values."""
        full = FullVector.from_type(
            HALFVEC(self.full_dims) if self.full_type == "halfvec" else VECTOR(self.full_dims),
            self.full_column,
        )
        return PrefixSpec.create(
            self.dims,
            full,
            distance=self.distance,
            storage=self.storage,
            m=self.m,
            ef_construction=self.ef_construction,
        )

    def index(self, table_name: str) -> str:
        return self.index_name or default_index_name(table_name, self.column)

    def ddl_signature(self, table_name: str) -> tuple[object, ...]:
        """What the database holds of this prefix: equal signatures need no migration. A bit
        prefix's distance only matters at query time, so it is left out for bit storage."""
        spec = self.spec()
        return (
            *self.column_signature(),
            spec.opclass,
            self.m,
            self.ef_construction,
            self.index(table_name),
        )

    def column_signature(self) -> tuple[object, ...]:
        """What the prefix column holds (for an index-only prefix, what its index is built on):
        two prefixes with equal signatures differ at most in their index's operator class or
        parameters, which can be rebuilt without touching any column."""
        spec = self.spec()
        return (
            self.stored,
            self.column,
            self.full_column,
            self.dims,
            spec.storage,
            str(spec.expression(column(self.full_column))),
        )

    @classmethod
    def from_declared(cls, prefix: Prefix) -> MRLPrefix:
        spec = prefix.spec
        return cls(
            column=prefix.name,
            full_column=str(prefix.full_column.name),
            full_dims=spec.full.dims,
            dims=spec.dims,
            distance=spec.distance.value,
            storage=spec.storage.value,
            m=spec.m,
            ef_construction=spec.ef_construction,
            full_type="halfvec" if spec.full.half else "vector",
            index_name=prefix.index_name,
            stored=prefix.stored,
        )
