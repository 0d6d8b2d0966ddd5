"""A bounded load test on a loopback database: N clients running ``.mrl_search()`` mixed with
inserts and updates for a fixed time.

    python benchmarks/load_test.py [--clients 4] [--seconds 15] [--write-fraction 0.1]

The database is ``MRL_PG_DSN`` if set (it must be on this machine: a Unix socket, localhost,
127.0.0.1 or ::1), else the embedded server. The script creates a table in a schema of its
own, loads MRL-like vectors, builds the prefix index, runs the clients, drops the schema, and
prints searches/s, writes/s, p50/p99 latencies, errors (expected: 0) and the recall@k of a
sampled fraction of the live searches, each re-run exactly right after it answered (the
:class:`RecallMonitor`, which also reports the running recall every few seconds). Exits with
status 1 if any operation failed. Clients, time and operations are capped.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import numpy as np
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import BigInteger, Engine, MetaData, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix
from mrl_pg.load import copy_vectors
from mrl_pg.tools.server import database_url, scratch_schema
from mrl_pg.tools.synthetic import mrl_like_vectors, queries_near

MAX_CLIENTS = 32
MAX_SECONDS = 300
MAX_OPERATIONS = 1_000_000
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}
DIMS = 768
PREFIX = 128


class Base(DeclarativeBase):
    metadata = MetaData()


class LoadItem(MRLSearchMixin, Base):
    __tablename__ = "load_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    embedding = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_128 = mrl_prefix(embedding, PREFIX)


class RecallMonitor:
    """Re-runs a sampled fraction of live searches exactly and keeps the running recall@k."""

    def __init__(self, fraction: float, seed: int = 0) -> None:
        self.fraction = fraction
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._hits = 0
        self._expected = 0
        self._checked = 0

    def wants(self) -> bool:
        with self._lock:
            return self._random.random() < self.fraction

    def check(self, session: Session, query: Any, found: list[int], k: int) -> None:
        """Compare ``found`` with the exact top ``k`` (a full scan of the full vectors)."""
        exact = session.scalars(
            select(LoadItem.id).order_by(LoadItem.embedding.cosine_distance(query)).limit(k)
        ).all()
        with self._lock:
            self._hits += len(set(found) & set(exact))
            self._expected += len(exact)
            self._checked += 1

    @property
    def samples(self) -> int:
        """How many searches were re-run exactly."""
        with self._lock:
            return self._checked

    @property
    def recall(self) -> float | None:
        """Running recall@k of the sampled searches (``None`` before the first sample)."""
        with self._lock:
            return self._hits / self._expected if self._expected else None


@dataclass
class Tally:
    """What the clients did, shared between their threads."""

    search_latencies: list[float] = field(default_factory=list)
    write_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, latencies: list[float], seconds: float) -> None:
        with self.lock:
            latencies.append(seconds)

    def error(self, exc: BaseException) -> None:
        with self.lock:
            self.errors[type(exc).__name__] += 1
            if len(self.first_errors) < 5:
                self.first_errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])

    def operations(self) -> int:
        with self.lock:
            return len(self.search_latencies) + len(self.write_latencies) + sum(
                self.errors.values()
            )


def check_loopback(url: str) -> None:
    parsed = make_url(url)
    host = parsed.host or parsed.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    if host and not str(host).startswith("/") and host not in LOOPBACK_HOSTS:
        sys.exit(f"refusing to load-test {host!r}: only a database on this machine is allowed")


def client(
    engine: Engine,
    queries: np.ndarray[Any, Any],
    args: argparse.Namespace,
    deadline: float,
    ids: count[int],
    id_lock: threading.Lock,
    tally: Tally,
    monitor: RecallMonitor,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    with Session(engine) as session:
        while time.perf_counter() < deadline and tally.operations() < MAX_OPERATIONS:
            started = time.perf_counter()
            try:
                if rng.random() < args.write_fraction:
                    vector = queries[rng.integers(len(queries))]
                    if rng.random() < 0.5:
                        with id_lock:
                            new_id = next(ids)
                        session.add(LoadItem(id=new_id, embedding=vector))
                    else:
                        target = int(rng.integers(args.rows))
                        session.execute(
                            update(LoadItem).where(LoadItem.id == target).values(embedding=vector)
                        )
                    session.commit()
                    tally.add(tally.write_latencies, time.perf_counter() - started)
                else:
                    query = queries[rng.integers(len(queries))]
                    rows = session.execute(LoadItem.mrl_search(query, k=args.k)).all()
                    tally.add(tally.search_latencies, time.perf_counter() - started)
                    found = [item.id for item, _ in rows]
                    session.commit()
                    if monitor.wants():
                        monitor.check(session, query, found, args.k)
                        session.commit()
            except Exception as exc:  # counted and reported, never hidden
                session.rollback()
                tally.error(exc)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q) * 1000) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--write-fraction", type=float, default=0.1)
    parser.add_argument("--sample", type=float, default=0.1, help="searches re-run exactly")
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be in [1, {MAX_CLIENTS}]")
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 0 <= args.write_fraction <= 1 or not 0 <= args.sample <= 1:
        parser.error("--write-fraction and --sample are fractions in [0, 1]")

    url = database_url()
    check_loopback(url)
    with scratch_schema(url, "load", pool_size=args.clients) as engine:
        return run(engine, args)


def run(engine: Engine, args: argparse.Namespace) -> int:
    vectors = mrl_like_vectors(args.rows, DIMS, seed=0)
    queries = queries_near(vectors, 1000, seed=1)
    table = LoadItem.__table__
    started = time.perf_counter()
    with engine.begin() as conn:
        table.create(conn)  # type: ignore[attr-defined]
        indexes = list(table.indexes)  # type: ignore[attr-defined]
        for index in indexes:
            index.drop(conn)
        copy_vectors(conn, table, "embedding", vectors, {"id": range(args.rows)})  # type: ignore[arg-type]
        for index in indexes:
            index.create(conn)
        conn.execute(text("ANALYZE load_items"))
    took = time.perf_counter() - started
    print(f"loaded {args.rows:,} x {DIMS} (prefix {PREFIX}), index built, in {took:.1f} s")

    tally = Tally()
    monitor = RecallMonitor(args.sample)
    ids = count(args.rows)
    id_lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + args.seconds
    threads = [
        threading.Thread(
            target=client,
            args=(engine, queries, args, deadline, ids, id_lock, tally, monitor, seed),
            daemon=True,
        )
        for seed in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    while alive := [thread for thread in threads if thread.is_alive()]:
        alive[0].join(timeout=5.0)
        running = monitor.recall
        print(
            f"  t={time.perf_counter() - start:5.1f}s  operations={tally.operations():,}  "
            f"running recall@{args.k}="
            + ("n/a" if running is None else f"{running:.3f}"),
            flush=True,
        )
    elapsed = time.perf_counter() - start

    searches, writes = tally.search_latencies, tally.write_latencies
    errors = sum(tally.errors.values())
    print(f"\n{args.clients} clients, {elapsed:.1f} s, write fraction {args.write_fraction}")
    print(f"  searches: {len(searches):,} ({len(searches) / elapsed:,.1f}/s), "
          f"p50 {percentile(searches, 50):.1f} ms, p99 {percentile(searches, 99):.1f} ms")
    print(f"  writes:   {len(writes):,} ({len(writes) / elapsed:,.1f}/s), "
          f"p50 {percentile(writes, 50):.1f} ms, p99 {percentile(writes, 99):.1f} ms")
    print(f"  errors:   {errors}" + (f" {dict(tally.errors)}" if errors else ""))
    for message in tally.first_errors:
        print(f"    {message}")
    recall = monitor.recall
    print(f"  recall@{args.k} on {monitor.samples} sampled searches: "
          + ("n/a" if recall is None else f"{recall:.3f}"))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
