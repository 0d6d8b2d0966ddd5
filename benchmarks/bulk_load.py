"""Bulk-load throughput: mrl_pg's binary COPY next to ``session.add_all`` and executemany.

    python benchmarks/bulk_load.py [--rows 10000] [--dims 1536] [--prefix 256]

The database is ``MRL_PG_DSN`` if set, else the embedded server. Every method loads the same
MRL-like vectors into a fresh table with a generated ``halfvec`` prefix column (the database
computes it on insert; no index, since building one costs the same whatever loaded the rows),
in a schema of its own that is dropped afterwards. Prints rows/s for each and the ratio to
the slowest.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector.psycopg import register_vector
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, Table, insert, text
from sqlalchemy.orm import Session, registry

from mrl_pg import add_prefix_column
from mrl_pg.load import copy_rows, copy_vectors
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import mrl_like_vectors

Vectors = npt.NDArray[np.float32]


class Item:
    """Mapped imperatively onto the benchmark table, for ``session.add_all``."""

    def __init__(self, id: int, embedding: Any) -> None:
        self.id = id
        self.embedding = embedding


def make_table(dims: int, prefix: int) -> Table:
    table = Table(
        "bulk_items",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("embedding", VECTOR(dims)),
    )
    add_prefix_column(table, "embedding", prefix)
    table.indexes.clear()  # no HNSW index: its build time does not depend on the loader
    return table


def load_copy(engine: Engine, table: Table, vectors: Vectors) -> None:
    with engine.begin() as conn:
        copy_vectors(conn, table, "embedding", vectors, {"id": range(len(vectors))})


def load_copy_rows(engine: Engine, table: Table, vectors: Vectors) -> None:
    with engine.begin() as conn:
        rows = ((i, vector) for i, vector in enumerate(vectors))
        copy_rows(conn, table, ["id", "embedding"], rows, total=len(vectors))


def load_add_all(engine: Engine, table: Table, vectors: Vectors) -> None:
    with Session(engine) as session:
        session.add_all(Item(id=i, embedding=vector) for i, vector in enumerate(vectors))
        session.commit()


def load_sqlalchemy_executemany(engine: Engine, table: Table, vectors: Vectors) -> None:
    with engine.begin() as conn:
        conn.execute(insert(table), [{"id": i, "embedding": v} for i, v in enumerate(vectors)])


def load_psycopg_executemany(engine: Engine, table: Table, vectors: Vectors) -> None:
    with engine.begin() as conn:
        raw: Any = conn.connection.dbapi_connection
        register_vector(raw)
        with raw.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO bulk_items (id, embedding) VALUES (%s, %b)",
                [(i, vector) for i, vector in enumerate(vectors)],
            )


METHODS: dict[str, Callable[[Engine, Table, Vectors], None]] = {
    "mrl_pg copy_vectors (binary COPY, numpy)": load_copy,
    "mrl_pg copy_rows (binary COPY, row iterable)": load_copy_rows,
    "session.add_all (ORM)": load_add_all,
    "Connection.execute(insert, rows) (SQLAlchemy executemany)": load_sqlalchemy_executemany,
    "psycopg cursor.executemany (binary vectors)": load_psycopg_executemany,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--dims", type=int, default=1536)
    parser.add_argument("--prefix", type=int, default=256)
    args = parser.parse_args()

    vectors = mrl_like_vectors(args.rows, args.dims, seed=0)
    table = make_table(args.dims, args.prefix)
    registry().map_imperatively(Item, table)
    print(f"{args.rows:,} rows x {args.dims} dims, generated {args.prefix}-dim halfvec prefix")
    rates: dict[str, float] = {}
    with scratch_schema(database_url(), "bulk") as engine:
        for name, load in METHODS.items():
            table.create(engine)
            started = time.perf_counter()
            load(engine, table, vectors)
            elapsed = time.perf_counter() - started
            with engine.connect() as conn:
                count = f"SELECT count(embedding_{args.prefix}) FROM bulk_items"
                if conn.execute(text(count)).scalar_one() != args.rows:
                    raise RuntimeError(f"{name} did not load every row with its prefix")
            table.drop(engine)
            rates[name] = args.rows / elapsed
            print(f"  {name:<60} {rates[name]:>9,.0f} rows/s  ({elapsed:.1f} s)", flush=True)
    slowest = min(rates.values())
    print("speed-up over the slowest:")
    for name, rate in rates.items():
        print(f"  {name:<60} {rate / slowest:>6.1f}x")


if __name__ == "__main__":
    main()
