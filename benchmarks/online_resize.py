"""Prefix resizes under a concurrent writer: plain stored, online stored, index-only online.

    python benchmarks/online_resize.py [--rows 200000] [--dims 768] [--from-dims 256]
                                       [--to-dims 128] [--batch-size 500]
                                       [--modes plain,online,index-only]

The database is ``MRL_PG_DSN`` if set, else the embedded server. In a schema of its own
(dropped afterwards) the script loads MRL-like vectors into a table with a stored
``--from-dims`` prefix and its HNSW index, then for each mode starts a writer (one autocommit
INSERT or UPDATE of a full vector at a time, as an application would) and resizes the prefix
to ``--to-dims``:

- ``plain``: ``op.resize_mrl_prefix(..., online=False)`` of the stored prefix: a table
  rewrite under an exclusive lock;
- ``online``: the same with ``online=True``: a staging column filled in batches;
- ``index-only``: the prefix is first switched to an index-only one (unmeasured), then
  resized with ``online=True``: ``CREATE INDEX CONCURRENTLY`` and ``DROP INDEX
  CONCURRENTLY``. Before it, the new index is built once alone (plain ``CREATE INDEX``, no
  writer) and dropped, as the yardstick of its total time.

Between runs the prefix is put back, unmeasured. For each mode it prints the total time, the
writes done during it, the longest a single write waited and its p99, the rows the migration
itself wrote (rows the writer left alone whose ``ctid`` or ``xmin`` changed) and whether it
rewrote the table's file, and checks that no write was lost and every row's stored prefix is
right.
"""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Engine,
    Insert,
    Integer,
    MetaData,
    Table,
    Update,
    column,
    insert,
    text,
    update,
)

from mrl_pg import add_prefix_column
from mrl_pg.alembic import MRLPrefix
from mrl_pg.alembic.online.change import DEFAULT_BATCH_SIZE
from mrl_pg.load import copy_vectors
from mrl_pg.sqltext import DIALECT
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import mrl_like_vectors


@dataclass
class Writes:
    """What the writer did while one migration ran."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    inserted: int = 0
    updated_ids: set[int] = field(default_factory=set)


class Writer(threading.Thread):
    """Alternates INSERTs of new rows and UPDATEs of existing ones until stopped."""

    def __init__(
        self, engine: Engine, table: Table, dims: int, rows: int, first_new_id: int
    ) -> None:
        super().__init__(daemon=True)
        self.engine, self.table, self.rows = engine, table, rows
        self.next_id = first_new_id
        self.pool = mrl_like_vectors(1_000, dims, seed=7)
        self.writes = Writes()
        self.stop = threading.Event()

    def run(self) -> None:
        rng = np.random.default_rng(3)
        table = self.table
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            n = 0
            while not self.stop.is_set():
                vector = self.pool[n % len(self.pool)]
                statement: Insert | Update
                updated_id = int(rng.integers(0, self.rows))
                if n % 2:
                    statement = (
                        update(table).where(table.c.id == updated_id).values(embedding=vector)
                    )
                else:
                    statement = insert(table).values(id=self.next_id, embedding=vector)
                started = time.perf_counter()
                try:
                    conn.execute(statement)
                except Exception as exc:  # reported: a failed write is a lost write
                    self.writes.errors.append(str(exc).splitlines()[0])
                else:
                    self.writes.latencies.append(time.perf_counter() - started)
                    if not n % 2:
                        self.next_id += 1
                        self.writes.inserted += 1
                    else:
                        self.writes.updated_ids.add(updated_id)
                n += 1


def resize(engine: Engine, old: MRLPrefix, new: MRLPrefix, *, online: bool, batch: int) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        with context.begin_transaction():
            Operations(context).resize_mrl_prefix(  # type: ignore[attr-defined]
                "resize_items", old, new, online=online, batch_size=batch
            )


def row_versions(engine: Engine) -> dict[int, str]:
    """Each row's place and creating transaction: they change when the row is written."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, ctid::text || ':' || xmin::text FROM resize_items"))
        return {int(row_id): str(version) for row_id, version in rows}


def filenode(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text("SELECT pg_relation_filenode('resize_items')")).scalar_one()
        )


def build_alone(engine: Engine, prefix: MRLPrefix) -> float:
    """Seconds a plain ``CREATE INDEX`` of ``prefix``'s index takes, with no writer."""
    spec = prefix.spec()
    expression = spec.expression(column("embedding")).compile(
        dialect=DIALECT, compile_kwargs={"literal_binds": True}
    )
    with engine.connect() as conn:
        started = time.perf_counter()
        conn.execute(text(
            f"CREATE INDEX resize_yardstick ON resize_items USING hnsw (({expression}) "
            f"{spec.opclass}) WITH (m = {spec.m}, ef_construction = {spec.ef_construction})"
        ))
        conn.commit()
        elapsed = time.perf_counter() - started
        conn.execute(text("DROP INDEX resize_yardstick"))
        conn.commit()
    print(f"  {'index build alone':<18} {elapsed:7.1f} s", flush=True)
    return elapsed


def wrong_prefixes(engine: Engine, prefix: MRLPrefix) -> int:
    if not prefix.stored:
        return 0
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    f"SELECT count(*) FROM resize_items WHERE {prefix.column} IS DISTINCT FROM "
                    f"subvector(embedding, 1, {prefix.dims})::halfvec({prefix.dims})"
                )
            ).scalar_one()
        )


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM resize_items")).scalar_one())


def measure(
    engine: Engine, table: Table, old: MRLPrefix, new: MRLPrefix, *, mode: str, batch: int
) -> tuple[float, float]:
    """Run one resize under the writer; print and return its total time and longest wait."""
    rows_before = count_rows(engine)
    dims = old.full_dims
    writer = Writer(engine, table, dims, rows_before, first_new_id=10 * rows_before)
    file_before, versions_before = filenode(engine), row_versions(engine)
    writer.start()
    time.sleep(1.0)  # the writer is in its stride before the migration starts
    started = time.perf_counter()
    writes_before = len(writer.writes.latencies)
    resize(engine, old, new, online=mode != "plain", batch=batch)
    elapsed = time.perf_counter() - started
    during = len(writer.writes.latencies) - writes_before
    time.sleep(1.0)
    writer.stop.set()
    writer.join()
    latencies = np.array(writer.writes.latencies)
    lost = rows_before + writer.writes.inserted - count_rows(engine)
    versions_after = row_versions(engine)
    written = sum(
        1
        for row_id, version in versions_before.items()
        if versions_after.get(row_id) != version and row_id not in writer.writes.updated_ids
    )
    rewritten = filenode(engine) != file_before
    print(
        f"  {mode:<18} {elapsed:7.1f} s   writes during it {during:>7,}   "
        f"longest write wait {latencies.max():7.3f} s   p99 {np.percentile(latencies, 99):.4f} s"
        f"   errors {len(writer.writes.errors)}   rows lost {lost}   "
        f"rows it wrote {written:,}   table rewritten {'yes' if rewritten else 'no'}   "
        f"wrong prefixes {wrong_prefixes(engine, new)}",
        flush=True,
    )
    return elapsed, float(latencies.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dims", type=int, default=768)
    parser.add_argument("--from-dims", type=int, default=256)
    parser.add_argument("--to-dims", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--modes", default="plain,online,index-only")
    args = parser.parse_args()
    modes = args.modes.split(",")

    table = Table(
        "resize_items",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("embedding", VECTOR(args.dims)),
    )
    add_prefix_column(table, "embedding", args.from_dims, name="embedding_mrl")
    big = MRLPrefix("embedding_mrl", "embedding", args.dims, args.from_dims)
    small = replace(big, dims=args.to_dims)
    batch = args.batch_size
    options = "-c maintenance_work_mem=1GB"
    results: dict[str, tuple[float, float]] = {}
    with scratch_schema(database_url(), "resize", options=options) as engine:
        print(f"{args.rows:,} rows x {args.dims} dims; prefix {args.from_dims} -> {args.to_dims}")
        started = time.perf_counter()
        (index,) = table.indexes
        table.indexes.clear()  # built once the rows are in: faster than row by row
        with engine.begin() as conn:
            table.create(conn)
            vectors = mrl_like_vectors(args.rows, args.dims, seed=1)
            copy_vectors(conn, table, "embedding", vectors, {"id": range(args.rows)})
            index.create(conn)
            conn.execute(text("ANALYZE resize_items"))
        print(f"  loaded and indexed in {time.perf_counter() - started:.1f} s", flush=True)
        for mode in ("plain", "online"):
            if mode in modes:
                results[mode] = measure(engine, table, big, small, mode=mode, batch=batch)
                resize(engine, small, big, online=False, batch=batch)  # back, unmeasured
        if "index-only" in modes:
            big_index_only = replace(big, stored=False)
            resize(engine, big, big_index_only, online=False, batch=batch)  # unmeasured
            alone = build_alone(engine, replace(small, stored=False))
            results["index-only"] = measure(
                engine, table, big_index_only, replace(small, stored=False),
                mode="index-only", batch=batch,
            )
            total = results["index-only"][0]
            print(f"index-only online / index build alone: total time {total / alone:.2f}x")
    for mode, (total, wait) in results.items():
        if mode != "plain" and "plain" in results:
            plain_total, plain_wait = results["plain"]
            print(
                f"{mode} / plain: total time {total / plain_total:.2f}x, "
                f"longest write wait {wait / plain_wait:.3f}x"
            )


if __name__ == "__main__":
    main()
