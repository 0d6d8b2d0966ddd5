"""The scratch table a bench runs on, in a schema of its own that is dropped afterwards.

The table holds ``id`` (the row's position in the data set), the full vector, and one
generated prefix column per measured (prefix size, storage). Rows are loaded by binary
``COPY`` before any index exists; the HNSW indexes are then built one after another, each
timed and measured with ``pg_relation_size``, and kept: every method runs with every index in
place, so that the methods can take turns (a planner picks the index whose expression the
statement orders by). A user's table is never touched: its vectors are read once and copied
here.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import Column, Engine, Index, Integer, MetaData, Table, text
from sqlalchemy.schema import CreateSchema, DropSchema

from mrl_pg.load import copy_vectors
from mrl_pg.prefix.declare import Prefix, add_prefix_column, prefixes_of
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.sqltext import TableRef
from mrl_pg.tools.measure.inputs import Dataset
from mrl_pg.tools.measure.progress import enabled, index_build_bar

TABLE = "bench_items"
FULL_COLUMN = "embedding"

INDEX_SIZE_SQL = text(
    "SELECT pg_relation_size(c.oid) FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = :name"
)


SIZES_SQL = text(
    "SELECT pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers, "
    "pg_table_size(CAST(:table AS regclass)) AS table_bytes, "
    "pg_indexes_size(CAST(:table AS regclass)) AS index_bytes"
)


@dataclass(frozen=True)
class DataSizes:
    """What a search may read (the table and its indexes) against PostgreSQL's buffer cache."""

    shared_buffers_bytes: int
    table_bytes: int
    index_bytes: int

    @property
    def fits(self) -> bool:
        return self.table_bytes + self.index_bytes <= self.shared_buffers_bytes

    def describe(self) -> str:
        data = self.table_bytes + self.index_bytes
        verdict = (
            "fits in shared_buffers" if self.fits
            else "does not fit in shared_buffers: reads beyond it come from the OS page cache"
        )
        return (f"shared_buffers {self.shared_buffers_bytes / 1e6:.0f} MB; table "
                f"{self.table_bytes / 1e6:.0f} MB + indexes {self.index_bytes / 1e6:.0f} MB = "
                f"{data / 1e6:.0f} MB: {verdict}")


@dataclass(frozen=True)
class BuiltIndex:
    name: str
    size_bytes: int
    build_s: float


@dataclass(frozen=True)
class HNSWParameters:
    m: int = 16
    ef_construction: int = 64


class ScratchTable:
    """A table of ``dataset``'s vectors with the prefix columns ``prefixes`` declares."""

    def __init__(
        self,
        engine: Engine,
        dataset: Dataset,
        prefixes: list[tuple[int, Storage]],
        distance: Distance,
        hnsw: HNSWParameters,
    ) -> None:
        self.engine = engine
        self.dataset = dataset
        self.distance = distance
        self.hnsw = hnsw
        self.schema = f"mrl_pg_bench_{uuid.uuid4().hex[:10]}"
        full_type = HALFVEC(dataset.dims) if dataset.half else VECTOR(dataset.dims)
        self.table = Table(
            TABLE,
            MetaData(schema=self.schema),
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column(FULL_COLUMN, full_type, nullable=False),
        )
        for dims, storage in prefixes:
            add_prefix_column(
                self.table,
                FULL_COLUMN,
                dims,
                name=prefix_column_name(dims, storage),
                distance=distance,
                storage=storage,
                m=hnsw.m,
                ef_construction=hnsw.ef_construction,
            )

    @property
    def full_type_name(self) -> str:
        return "halfvec" if self.dataset.half else "vector"

    @property
    def qualified_name(self) -> str:
        return TableRef(TABLE, self.schema).sql

    def prefix(self, dims: int, storage: Storage) -> Prefix:
        name = prefix_column_name(dims, storage)
        return next(p for p in prefixes_of(self.table) if p.name == name)

    def create(self) -> None:
        """Create the schema and table, load the rows, analyse; no HNSW index yet."""
        with self.engine.begin() as conn:
            conn.execute(CreateSchema(self.schema))
            self.table.create(conn)
            for index in self.table.indexes:
                index.drop(conn)
            vectors = self.dataset.vectors
            copy_vectors(
                conn, self.table, FULL_COLUMN, vectors, {"id": range(len(vectors))},
                progress=enabled(),
            )
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM ANALYZE {self.qualified_name}"))

    def full_index(self) -> Index:
        """An HNSW index on the full vectors, with the prefixes' HNSW parameters."""
        return Index(
            f"{TABLE}_full_hnsw",
            self.table.c[FULL_COLUMN],
            postgresql_using="hnsw",
            postgresql_with={"m": self.hnsw.m, "ef_construction": self.hnsw.ef_construction},
            postgresql_ops={FULL_COLUMN: f"{self.full_type_name}_{self.distance.opclass_suffix}"},
        )

    def prefix_index(self, prefix: Prefix) -> Index:
        return next(i for i in self.table.indexes if i.name == prefix.index_name)

    def build(self, index: Index) -> BuiltIndex:
        """Create ``index``, timing the build, and return its size."""
        with self.engine.connect() as conn:
            pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            conn.commit()
            with index_build_bar(self.engine, pid, f"index {index.name}"):
                started = time.perf_counter()
                index.create(conn)
                conn.commit()
                seconds = time.perf_counter() - started
            size = conn.execute(
                INDEX_SIZE_SQL, {"schema": self.schema, "name": index.name}
            ).scalar_one()
            conn.commit()
        return BuiltIndex(str(index.name), int(size), seconds)

    def sizes(self) -> DataSizes:
        """The table's size (heap and TOAST) and its indexes', against ``shared_buffers``."""
        with self.engine.connect() as conn:
            row = conn.execute(SIZES_SQL, {"table": self.qualified_name}).one()
        return DataSizes(int(row.shared_buffers), int(row.table_bytes), int(row.index_bytes))

    def drop(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(DropSchema(self.schema, cascade=True, if_exists=True))


def prefix_column_name(dims: int, storage: Storage) -> str:
    return f"{FULL_COLUMN}_{dims}_{storage.value}"
