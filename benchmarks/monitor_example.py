"""The worked example of docs/monitoring.md: one tenant's searches get worse, and the recall
monitor says so; then ``mrl-pg evaluate --segment`` finds the same tenant offline.

    python benchmarks/monitor_example.py [--plots docs/]

A table of 8 tenants' documents (MRL-like 256-d vectors, a 64-d prefix) serves searches
filtered by tenant, with a monitor attached (``sample_rate=0.2``, ``segment_column="tenant"``).
Phase 1: every tenant's searches are healthy. Phase 2: tenant 7 imports 3,000 documents from
another embedding model, one whose first 64 dimensions carry nothing about their neighbours
(the signal lies in the later dimensions); its searches now mostly find those documents, and
its recall falls. The script prints the monitor's warning, its snapshot after each phase, and
writes the monitor's recall by tenant (``monitoring-segments.png``) and the offline figures
(``evaluate-segments.png``). The database is ``MRL_PG_DSN``, else the embedded server; the
schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Engine, Integer, MetaData, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mrl_pg import copy_vectors, mrl_prefix, mrl_search
from mrl_pg.monitor import MonitorSnapshot, RecallMonitor
from mrl_pg.tools.cli import main as mrl_pg_command
from mrl_pg.tools.measure.plot import segment_plot
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import mrl_like_vectors, normalize, queries_near

TENANTS, ROWS_PER_TENANT, DIMS, PREFIX = 8, 2_000, 256, 64
IMPORTED = 3_000
SEARCHES_PER_PHASE = 1_200


class Base(DeclarativeBase):
    metadata = MetaData()


class Document(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer, index=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_64 = mrl_prefix(embedding, PREFIX)


def other_model(rows: int, seed: int) -> npt.NDArray[np.float32]:
    """Vectors whose first ``PREFIX`` dimensions are noise: a model not trained for MRL."""
    vectors = mrl_like_vectors(rows, DIMS, seed=seed)
    noise = np.random.default_rng(seed + 1).standard_normal((rows, PREFIX))
    vectors[:, :PREFIX] = noise * np.abs(vectors[:, :PREFIX]).mean()
    return normalize(vectors)


def load(engine: Engine, vectors: npt.NDArray[np.float32], tenants: list[int], first_id: int,
         create: bool) -> None:
    table = Document.__table__
    with engine.begin() as conn:
        if create:
            table.create(conn)  # type: ignore[attr-defined]
        copy_vectors(conn, table, "embedding", vectors,  # type: ignore[arg-type]
                     {"id": range(first_id, first_id + len(vectors)), "tenant": tenants})
        conn.execute(text("ANALYZE documents"))


def traffic(engine: Engine, queries: dict[int, npt.NDArray[np.float32]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    with Session(engine) as session:
        for _ in range(SEARCHES_PER_PHASE):
            tenant = int(rng.integers(TENANTS))
            query = queries[tenant][int(rng.integers(len(queries[tenant])))]
            search = mrl_search(select(Document).where(Document.tenant == tenant), query, 10)
            session.execute(search).all()


def show(snapshot: MonitorSnapshot) -> None:
    print(f"sampled {snapshot.sampled}, checked {snapshot.checked}, dropped {snapshot.dropped},"
          f" failed {snapshot.failed}")
    for figure in snapshot.tables:
        print(f"  {figure.table} {figure.prefix}: recall@10 {figure.recall:.3f} over "
              f"{figure.checks} checks")
    for figure in snapshot.segments:
        flag = "  BELOW THRESHOLD" if figure.below_threshold else ""
        print(f"  tenant {figure.segment}: {figure.recall:.3f} over {figure.checks} checks, "
              f"lowest {figure.lowest:.1f}{flag}")
    worst = snapshot.worst[0]
    print(f"  worst: {worst.at:%H:%M:%S} tenant {worst.segment} recall {worst.recall:.1f} "
          f"query {worst.query_hash}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plots", type=Path, default=Path("docs"))
    args = parser.parse_args()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    url = database_url()
    base = mrl_like_vectors(TENANTS * ROWS_PER_TENANT, DIMS, seed=3)
    tenants = [i % TENANTS for i in range(len(base))]
    imported = other_model(IMPORTED, seed=5)
    queries = {t: queries_near(base[t::TENANTS], 100, seed=10 + t) for t in range(TENANTS)}
    with scratch_schema(url, "mrl_pg_monitor_example") as engine:
        load(engine, base, tenants, 0, create=True)
        monitor = RecallMonitor.attach(engine, sample_rate=0.2, segment_column="tenant",
                                       threshold=0.9, window=50, min_checks=20, seed=1)
        print("phase 1: every tenant's documents from the MRL model")
        traffic(engine, queries, seed=1)
        monitor.wait_idle(timeout=600)
        show(monitor.snapshot())

        print(f"\nphase 2: tenant 7 imports {IMPORTED} documents from another model")
        load(engine, imported, [7] * IMPORTED, len(base), create=False)
        queries[7] = queries_near(imported, 100, seed=20)
        traffic(engine, queries, seed=2)
        monitor.wait_idle(timeout=600)
        snapshot = monitor.close()
        show(snapshot)
        segment_plot(
            [f"tenant {f.segment}" for f in snapshot.segments],
            {PREFIX: [f.recall for f in snapshot.segments]},
            PREFIX, 100, snapshot.threshold, args.plots / "monitoring-segments.png",
            "recall monitor after phase 2: rolling recall@10 by tenant (last 50 checks each)",
        )

        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        print("\noffline: mrl-pg evaluate --segment tenant")
        mrl_pg_command([
            "evaluate", "--dsn", url, "--table", f"{schema}.documents", "--segment", "tenant",
            "--prefix", "32,64,128", "--candidates", "40,100,200", "--query-count", "100",
            "--target-recall", "0.9", "--plot", str(args.plots / "evaluate-segments.png"),
        ])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
