"""The recall monitor on a real database: a degraded tenant and a too-short prefix are caught
and warned about, a healthy set-up reads >= 0.95, and every figure equals what numpy computes
from the rows the searches returned; sampling keeps its rate; failures never reach the caller;
close() drains or drops; async engines work."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    make_url,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from mrl_pg import MRLQuery, add_prefix_column, copy_vectors, mrl_prefix, mrl_search
from mrl_pg.errors import MonitorConfigError
from mrl_pg.monitor import (
    CheckedQuery,
    MonitorSnapshot,
    RecallFigure,
    RecallMonitor,
    query_hash,
)
from mrl_pg.monitor.figures import Figures
from mrl_pg.sqltext import ident
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, normalize, queries_near
from tests.conftest import schema_engine
from tests.data import create_and_load

ROWS = 6_000
DIMS = 256
PREFIX = 64
TENANTS = 6
#: The tenant whose vectors carry no signal in the prefix's dimensions.
DEGRADED = 5
QUERIES_PER_TENANT = 30
K = 10
PREFIX_64 = "embedding_64"


def tenant_vectors() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """MRL-like vectors for every tenant; the degraded tenant's first ``PREFIX`` dimensions
    are noise unrelated to its neighbours (its signal lies in the later dimensions)."""
    vectors = mrl_like_vectors(ROWS, DIMS, seed=41)
    tenants = np.arange(ROWS) % TENANTS
    rows = tenants == DEGRADED
    noise = np.random.default_rng(42).standard_normal((int(rows.sum()), PREFIX))
    vectors[rows, :PREFIX] = (noise * np.abs(vectors[rows, :PREFIX]).mean()).astype(np.float32)
    return normalize(vectors), tenants


VECTORS, TENANT_OF = tenant_vectors()
QUERIES = {
    tenant: queries_near(VECTORS[tenant == TENANT_OF], QUERIES_PER_TENANT, seed=50 + tenant)
    for tenant in range(TENANTS)
}


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    __tablename__ = "monitored_items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_64 = mrl_prefix(embedding, PREFIX)
    embedding_8 = mrl_prefix(embedding, 8)


@pytest.fixture(scope="module")
def engine(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    with schema_engine(database_url, server_engine) as engine:
        create_and_load(
            engine, Item.__table__, "embedding", VECTORS,  # type: ignore[arg-type]
            {"id": list(range(ROWS)), "tenant": TENANT_OF.tolist()},
        )
        yield engine


@pytest.fixture
def monitor_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mrl_pg.monitor")
    return caplog


def schema_of(engine: Engine) -> str:
    with engine.connect() as conn:
        return str(conn.execute(text("SELECT current_schema()")).scalar_one())


def single_connection_engine(database_url: str, engine: Engine) -> Engine:
    """An engine on ``engine``'s schema with one connection at most: a test that holds it
    holds every check back."""
    return create_engine(
        database_url, pool_size=1, max_overflow=0,
        connect_args={"options": f"-c search_path={schema_of(engine)},public"},
    )


def truth_in_tenant(tenant: int, query: npt.NDArray[np.float32]) -> list[int]:
    rows = np.flatnonzero(tenant == TENANT_OF)
    return rows[exact_neighbors(VECTORS[rows], query[None], K)[0]].tolist()


def truth_everywhere(query: npt.NDArray[np.float32]) -> list[int]:
    return exact_neighbors(VECTORS, query[None], K)[0].tolist()


def recall_of(found: list[int], truth: list[int]) -> float:
    return len(set(found) & set(truth)) / len(truth)


def tenant_search(session: Session, tenant: int, query: npt.NDArray[np.float32]) -> list[int]:
    search = mrl_search(select(Item).where(Item.tenant == tenant), query, K, prefix=PREFIX_64)
    return [item.id for item, _ in session.execute(search)]


def figure(snapshot: MonitorSnapshot, prefix: str, segment: str | None) -> RecallFigure:
    figures = snapshot.tables if segment is None else snapshot.segments
    [found] = [f for f in figures if f.prefix == prefix and f.segment == segment]
    return found


def warnings_about(log: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage() for r in log.records
        if r.name == "mrl_pg.monitor" and r.levelno == logging.WARNING and text in r.getMessage()
    ]


@pytest.mark.slow
def test_degraded_tenant_is_caught_and_warned_once(
    engine: Engine, monitor_log: pytest.LogCaptureFixture
) -> None:
    expected: dict[int, list[float]] = {tenant: [] for tenant in range(TENANTS)}
    by_hash: dict[str, float] = {}
    with RecallMonitor.attach(
        engine, 1.0, segment_column="tenant", threshold=0.9, window=100, min_checks=10
    ) as monitor, Session(engine) as session:
        for round_ in range(QUERIES_PER_TENANT):
            for tenant in range(TENANTS):  # interleaved, as live traffic would be
                query = QUERIES[tenant][round_]
                found = tenant_search(session, tenant, query)
                assert len(found) == K
                expected[tenant].append(recall_of(found, truth_in_tenant(tenant, query)))
                by_hash[query_hash(query)] = expected[tenant][-1]
        assert monitor.wait_idle(timeout=300)
        snapshot = monitor.snapshot()

    assert snapshot.checked == snapshot.sampled == TENANTS * QUERIES_PER_TENANT
    assert (snapshot.failed, snapshot.dropped, snapshot.skipped) == (0, 0, 0)
    for tenant in range(TENANTS):
        segment = figure(snapshot, "embedding_64", str(tenant))
        assert segment.checks == QUERIES_PER_TENANT
        assert segment.recall == pytest.approx(np.mean(expected[tenant]), abs=0.01)
        assert segment.lowest == pytest.approx(min(expected[tenant]), abs=0.1)
        assert segment.below_threshold is (tenant == DEGRADED)
        if tenant != DEGRADED:
            assert segment.recall >= 0.95
    degraded = figure(snapshot, "embedding_64", str(DEGRADED))
    assert degraded.recall < 0.6
    assert snapshot.segments[0] == degraded  # lowest first
    overall = figure(snapshot, "embedding_64", None)
    assert overall.checks == 100  # the window
    assert len(warnings_about(monitor_log, f"segment '{DEGRADED}'")) == 1  # once per crossing
    assert not warnings_about(monitor_log, "segment '0'")

    assert len(snapshot.worst) == 20
    assert {check.segment for check in snapshot.worst} == {str(DEGRADED)}
    assert [c.recall for c in snapshot.worst] == sorted(c.recall for c in snapshot.worst)
    for check in snapshot.worst:
        assert check.recall == pytest.approx(by_hash[check.query_hash], abs=0.1)
        assert check.query_vector is None
        assert (check.table, check.prefix, check.k) == ("monitored_items", "embedding_64", K)


@pytest.mark.slow
def test_too_short_prefix_is_caught_and_a_healthy_one_reads_high(
    engine: Engine, monitor_log: pytest.LogCaptureFixture
) -> None:
    healthy = [t for t in range(TENANTS) if t != DEGRADED]
    queries = np.concatenate([QUERIES[t][:10] for t in healthy])
    expected: dict[str, list[float]] = {"embedding_8": [], "embedding_64": []}
    segments: Counter[str] = Counter()
    with RecallMonitor.attach(
        engine, 1.0, segment_column="tenant", threshold=0.9, min_checks=10
    ) as monitor, engine.connect() as conn:
        for query in queries:
            truth = truth_everywhere(query)
            segments[str(Counter(TENANT_OF[truth].tolist()).most_common(1)[0][0])] += 2
            for prefix in expected:
                rows = conn.execute(mrl_search(Item.__table__, query, K, prefix=prefix)).all()
                expected[prefix].append(recall_of([row.id for row in rows], truth))
        assert monitor.wait_idle(timeout=300)
        snapshot = monitor.snapshot()

    short, healthy_figure = figure(snapshot, "embedding_8", None), figure(
        snapshot, "embedding_64", None
    )
    assert short.recall == pytest.approx(np.mean(expected["embedding_8"]), abs=0.01)
    assert healthy_figure.recall == pytest.approx(np.mean(expected["embedding_64"]), abs=0.01)
    assert short.recall < 0.9 and short.below_threshold
    assert healthy_figure.recall >= 0.95 and not healthy_figure.below_threshold
    assert len(warnings_about(monitor_log, "of monitored_items prefix embedding_8 is")) == 1
    assert not warnings_about(monitor_log, "of monitored_items prefix embedding_64 is")
    # an unfiltered search's segment is the tenant most of its exact top k rows share
    checked_segments: Counter[str] = Counter()
    for segment in snapshot.segments:
        checked_segments[str(segment.segment)] += segment.checks
    assert checked_segments == segments


def test_segment_named_by_the_app(engine: Engine) -> None:
    with RecallMonitor.attach(engine, 1.0) as monitor, Session(engine) as session:
        for tenant, language in ((0, "fr"), (1, "fr"), (2, "de")):
            search = mrl_search(
                select(Item).where(Item.tenant == tenant), QUERIES[tenant][0], K, prefix=PREFIX_64
            )
            session.execute(search, execution_options={"mrl_pg_segment": language}).all()
        french = search.execution_options(mrl_pg_segment="fr")  # on the statement
        session.execute(french).all()
        assert monitor.wait_idle(timeout=120)
        snapshot = monitor.snapshot()
    assert {f.segment: f.checks for f in snapshot.segments} == {"fr": 3, "de": 1}


@pytest.mark.parametrize("rate", [0.0, 0.05])
def test_sample_rate_is_honoured(engine: Engine, rate: float) -> None:
    searches = 1_000
    query = QUERIES[0][0]
    with RecallMonitor.attach(engine, rate, seed=7) as monitor, engine.connect() as conn:
        search = mrl_search(Item.__table__, query, K, prefix=PREFIX_64)
        for _ in range(searches):
            conn.execute(search).all()
        assert monitor.wait_idle(timeout=120)
        snapshot = monitor.snapshot()
    mean = searches * rate
    spread = 5 * np.sqrt(searches * rate * (1 - rate))  # five binomial standard deviations
    assert mean - spread <= snapshot.sampled <= mean + spread
    assert snapshot.checked + snapshot.dropped == snapshot.sampled
    assert snapshot.failed == 0


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_replica_down_never_reaches_the_caller(
    engine: Engine, monitor_log: pytest.LogCaptureFixture
) -> None:
    replica = f"postgresql://nobody@127.0.0.1:{closed_port()}/nothing"
    plain = []
    with Session(engine) as session:
        plain = [tenant_search(session, 1, q) for q in QUERIES[1][:5]]
    with RecallMonitor.attach(engine, 1.0, replica=replica) as monitor, Session(engine) as s:
        monitored = [tenant_search(s, 1, q) for q in QUERIES[1][:5]]
        assert monitor.wait_idle(timeout=120)
        snapshot = monitor.snapshot()
    assert monitored == plain
    assert (snapshot.sampled, snapshot.failed, snapshot.checked) == (5, 5, 0)
    assert snapshot.last_error is not None and "OperationalError" in snapshot.last_error
    assert len(warnings_about(monitor_log, "recall check failed")) == 1  # then DEBUG


def test_statement_timeout_ends_a_check_not_the_search(database_url: str, engine: Engine) -> None:
    checks = single_connection_engine(database_url, engine)
    held = checks.connect()
    try:
        monitor = RecallMonitor.attach(
            engine, 1.0, replica=checks, statement_timeout=0.2, max_concurrent=1
        )
        with Session(engine) as session:
            found = [tenant_search(session, 2, q) for q in QUERIES[2][:3]]
        assert all(len(ids) == K for ids in found)
        with engine.connect() as locker, locker.begin():
            table = ident(Item.__tablename__)
            locker.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            held.close()  # the checks may start now, and wait for the lock
            assert monitor.wait_idle(timeout=120)
        snapshot = monitor.close()
    finally:
        held.close()
        checks.dispose()
    assert (snapshot.sampled, snapshot.failed, snapshot.checked) == (3, 3, 0)
    assert snapshot.last_error is not None and "statement timeout" in snapshot.last_error


@pytest.mark.parametrize("drain", [True, False])
def test_close_drains_or_drops_pending_checks(
    database_url: str, engine: Engine, drain: bool
) -> None:
    checks = single_connection_engine(database_url, engine)
    held = checks.connect()
    searches = 6
    try:
        monitor = RecallMonitor.attach(engine, 1.0, replica=checks, max_concurrent=1)
        with Session(engine) as session:
            for query in QUERIES[3][:searches]:
                tenant_search(session, 3, query)
        if drain:  # close() waits for the queued checks, which run once the connection is free
            closing = threading.Thread(target=monitor.close)
            closing.start()
            held.close()
            closing.join()
        else:  # close() drops the queued checks; the running one finishes on its own
            closed = monitor.close(drain=False, timeout=0)
            assert closed.dropped >= searches - 1
            held.close()
        assert monitor.wait_idle(timeout=120)
        snapshot = monitor.snapshot()
        with Session(engine) as session:
            tenant_search(session, 3, QUERIES[3][0])  # no longer sampled
    finally:
        held.close()
        checks.dispose()
    assert snapshot.sampled == searches and snapshot.pending == 0 and snapshot.failed == 0
    if drain:
        assert (snapshot.checked, snapshot.dropped) == (searches, 0)
    else:
        assert snapshot.checked + snapshot.dropped == searches
        assert snapshot.checked <= 1
    assert monitor.snapshot().sampled == searches


@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_engine(database_url: str, engine: Engine, driver: str) -> None:
    pytest.importorskip("greenlet")
    pytest.importorskip(driver)
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    search_path = f"{schema_of(engine)},public"
    connect_args: dict[str, Any] = (
        {"server_settings": {"search_path": search_path}}
        if driver == "asyncpg"
        else {"options": f"-c search_path={search_path}"}
    )
    url = make_url(database_url).set(drivername=f"postgresql+{driver}")
    queries = QUERIES[4][:8]

    async def main() -> tuple[list[float], MonitorSnapshot]:
        async_engine = create_async_engine(url, connect_args=connect_args)
        monitor = RecallMonitor.attach(async_engine, 1.0, segment_column="tenant")
        try:
            recalls = []
            async with AsyncSession(async_engine) as session:
                for query in queries:
                    search = mrl_search(
                        select(Item).where(Item.tenant == 4), query, K, prefix=PREFIX_64
                    )
                    found = [item.id for item, _ in (await session.execute(search)).all()]
                    recalls.append(recall_of(found, truth_in_tenant(4, query)))
            assert await asyncio.to_thread(monitor.wait_idle, 120)
            return recalls, monitor.close()
        finally:
            monitor.close()
            await async_engine.dispose()

    recalls, snapshot = asyncio.run(main())
    assert (snapshot.checked, snapshot.failed) == (len(queries), 0), snapshot.last_error
    assert figure(snapshot, "embedding_64", "4").recall == pytest.approx(np.mean(recalls), abs=0.01)


def test_raw_vectors_only_when_asked(engine: Engine) -> None:
    query = QUERIES[DEGRADED][0]
    for keep in (False, True):
        with RecallMonitor.attach(engine, 1.0, keep_raw_vectors=keep, worst=1) as monitor:
            with Session(engine) as session:
                tenant_search(session, DEGRADED, query)
            assert monitor.wait_idle(timeout=60)
            [worst] = monitor.snapshot().worst
        assert worst.query_hash == query_hash(query)
        if keep:
            assert worst.query_vector is not None
            np.testing.assert_array_equal(np.array(worst.query_vector, dtype=np.float32), query)
        else:
            assert worst.query_vector is None


def test_prometheus_gauges(engine: Engine) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    with RecallMonitor.attach(engine, 1.0, segment_column="tenant") as monitor:
        with Session(engine) as session:
            for query in QUERIES[DEGRADED][:3]:
                tenant_search(session, DEGRADED, query)
        assert monitor.wait_idle(timeout=60)
        snapshot = monitor.snapshot()
        labels = {"table": "monitored_items", "prefix": "embedding_64"}
        for segment in ("", str(DEGRADED)):
            value = prometheus_client.REGISTRY.get_sample_value(
                "mrl_pg_recall", {**labels, "segment": segment}
            )
            assert value == pytest.approx(figure(snapshot, "embedding_64", segment or None).recall)
    assert prometheus_client.REGISTRY.get_sample_value(
        "mrl_pg_recall", {**labels, "segment": ""}
    ) is None  # removed at close


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sample_rate": 1.5}, "sample_rate must be a number in [0, 1]"),
        ({"sample_rate": float("nan")}, "sample_rate"),
        ({"threshold": 0}, "threshold must be a number in (0, 1]"),
        ({"window": 0}, "window must be an integer >= 1"),
        ({"window": 5, "min_checks": 6}, "min_checks (6) must not exceed window (5)"),
        ({"max_concurrent": 0}, "max_concurrent must be an integer >= 1"),
        ({"max_pending": True}, "max_pending must be an integer >= 1"),
        ({"statement_timeout": -1}, "statement_timeout must be a number"),
        ({"segment_column": ""}, "segment_column must be a column name"),
        ({"replica": 5}, "replica must be a DSN or a sync Engine"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    engine: Engine, options: dict[str, Any], message: str
) -> None:
    threads = threading.active_count()
    with pytest.raises(MonitorConfigError) as caught:
        RecallMonitor.attach(engine, **options)
    assert message in str(caught.value)
    assert threading.active_count() == threads


def test_one_monitor_per_engine(engine: Engine) -> None:
    with pytest.raises(MonitorConfigError, match="attaches to an Engine or an AsyncEngine"):
        RecallMonitor.attach("postgresql://nowhere")  # type: ignore[arg-type]
    first = RecallMonitor.attach(engine, 0.0)
    try:
        with pytest.raises(MonitorConfigError, match="already has a recall monitor"):
            RecallMonitor.attach(engine.execution_options(isolation_level="AUTOCOMMIT"))
    finally:
        first.close()
    RecallMonitor.attach(engine, 0.0).close()  # attachable again once closed


def test_a_recall_hovering_at_the_threshold_warns_once(
    monitor_log: pytest.LogCaptureFixture,
) -> None:
    figures = Figures(window=2, min_checks=2, threshold=0.9, worst=3, gauges=None)

    def check(recall: float) -> CheckedQuery:
        return CheckedQuery(datetime.now(timezone.utc), "t", "p", None, 10, recall, "h", None)

    # window means: 0.85 (warns), 0.85, 0.91 (above the threshold, not by the margin), 0.76
    for recall in [1.0, 0.7, 1.0, 0.82, 0.7] * 3:
        figures.record(check(recall))
    assert len(warnings_about(monitor_log, "of t prefix p is")) == 1
    figures.record(check(1.0))
    figures.record(check(1.0))  # 1.0: cleared, logged at INFO
    figures.record(check(0.0))  # 0.5: a new crossing
    assert len(warnings_about(monitor_log, "of t prefix p is")) == 2
    tables, segments, worst = figures.figures()
    assert [w.recall for w in worst] == [0.0, 1.0] and segments == ()
    assert tables[0].below_threshold and tables[0].recall == pytest.approx(0.5)


def test_legacy_query_searches_are_checked(engine: Engine) -> None:
    query = QUERIES[0][1]
    with RecallMonitor.attach(engine, 1.0) as monitor:
        with sessionmaker(engine, query_cls=MRLQuery)() as session:
            rows = session.query(Item).filter(Item.tenant == 0).mrl_search(
                query, k=K, prefix=PREFIX_64
            ).all()
        assert monitor.wait_idle(timeout=60)
        snapshot = monitor.snapshot()
    expected = recall_of([item.id for item, _ in rows], truth_in_tenant(0, query))
    assert snapshot.checked == 1
    assert figure(snapshot, PREFIX_64, None).recall == pytest.approx(expected)


def test_a_table_without_primary_key_is_skipped_and_said_once(
    engine: Engine, monitor_log: pytest.LogCaptureFixture
) -> None:
    table = Table("keyless", MetaData(), Column("embedding", VECTOR(8)))
    add_prefix_column(table, "embedding", 4)
    with engine.begin() as conn:
        table.create(conn)
        copy_vectors(conn, table, "embedding", VECTORS[:50, :8], {})
    try:
        with RecallMonitor.attach(engine, 1.0) as monitor, engine.connect() as conn:
            for query in VECTORS[50:53, :8]:
                assert len(conn.execute(mrl_search(table, query, 3)).all()) == 3
            assert monitor.wait_idle(timeout=60)
            snapshot = monitor.snapshot()
    finally:
        with engine.begin() as conn:
            table.drop(conn)
    assert (snapshot.sampled, snapshot.skipped, snapshot.checked) == (3, 3, 0)
    assert len(warnings_about(monitor_log, "has no primary key")) == 1
