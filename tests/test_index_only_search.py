"""Index-only prefixes (``stored=False``): declared, created, searched, against a real
PostgreSQL; recall against exact numpy ground truth, the plan's index, filters, funnels,
aliased entities, the prefix as a selectable expression, and a table with no prefix column."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Engine, Integer, MetaData, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from mrl_pg import Distance, MRLSearchMixin, mrl_prefix, mrl_search, prefixes_of
from mrl_pg.tools.synthetic import (
    exact_distances,
    exact_neighbors,
    mrl_like_vectors,
    queries_near,
    recall_at_k,
)
from tests.conftest import schema_engine
from tests.data import create_and_load

pytestmark = pytest.mark.slow

ROWS = 4_000
DIMS = 384
PREFIX = 96
BIT_PREFIX = 256
TENANTS = 40
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=21)
QUERY_VECTORS = queries_near(VECTORS, 40, seed=22)


class Base(DeclarativeBase):
    metadata = MetaData()


class Passage(MRLSearchMixin, Base):
    """Index-only prefixes for every distance x storage pair, and no prefix column."""

    __tablename__ = "passages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)

    cosine_vector = mrl_prefix(embedding, PREFIX, storage="vector", stored=False)
    cosine_halfvec = mrl_prefix(embedding, PREFIX, stored=False)
    cosine_bit = mrl_prefix(embedding, BIT_PREFIX, storage="bit", stored=False)
    inner_product_halfvec = mrl_prefix(
        embedding, PREFIX, distance="inner_product", stored=False
    )
    l2_vector = mrl_prefix(embedding, PREFIX, distance="l2", storage="vector", stored=False)
    l2_bit = mrl_prefix(embedding, 320, distance="l2", storage="bit", stored=False)


PREFIXES = [p.name for p in prefixes_of(Passage.__table__)]


@pytest.fixture(scope="module")
def passages_engine(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    with schema_engine(database_url, server_engine) as engine:
        create_and_load(
            engine,
            Passage.__table__,
            "embedding",
            VECTORS,
            {"id": list(range(ROWS)), "tenant": [i % TENANTS for i in range(ROWS)]},
        )
        yield engine


@pytest.fixture
def session(passages_engine: Engine) -> Iterator[Session]:
    with Session(passages_engine) as session:
        yield session


def test_the_table_has_no_prefix_column(passages_engine: Engine) -> None:
    with passages_engine.connect() as conn:
        columns = conn.execute(
            text(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'passages'::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ).scalars().all()
        indexes = conn.execute(
            text("SELECT count(*) FROM pg_indexes WHERE tablename = 'passages' AND indexdef LIKE '%hnsw%'")
        ).scalar_one()
    assert columns == ["id", "tenant", "embedding"]
    assert indexes == len(PREFIXES) == 6


@pytest.mark.parametrize("name", PREFIXES)
def test_recall_and_exact_order(session: Session, name: str) -> None:
    distance = next(p for p in prefixes_of(Passage.__table__) if p.name == name).spec.distance
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10, distance)
    found = []
    for query in QUERY_VECTORS:
        rows = session.execute(Passage.mrl_search(query, k=10, prefix=name)).all()
        ids = [passage.id for passage, _ in rows]
        distances = np.array([d for _, d in rows])
        expected = exact_distances(
            VECTORS[ids].astype(np.float64), query[None].astype(np.float64), distance
        )[0]
        np.testing.assert_allclose(distances, expected, atol=1e-5)
        found.append(ids)
    recall = recall_at_k(found, truth)
    assert recall >= 0.95, f"recall@10 {recall:.3f} with {name}"


@pytest.mark.parametrize("name", ["cosine_halfvec", "inner_product_halfvec", "l2_bit"])
def test_the_expression_index_serves_the_first_stage(
    session: Session, passages_engine: Engine, name: str
) -> None:
    stmt = Passage.mrl_search(QUERY_VECTORS[0], k=10, prefix=name)
    sql = stmt.compile(passages_engine, compile_kwargs={"literal_binds": True})
    plan = "\n".join(session.execute(text(f"EXPLAIN {sql}")).scalars())
    assert f"Index Scan using ix_passages_{name}_hnsw" in plan, plan


def test_the_prefix_numbers_are_literals_in_the_statement(passages_engine: Engine) -> None:
    """psycopg prepares a statement run often, and PostgreSQL may then plan it once for any
    values: with bound numbers, ``subvector(embedding, $2, $3)`` would no longer be the
    index's expression, and the search would read the whole table."""
    stmt = Passage.mrl_search(QUERY_VECTORS[0], k=10, prefix="cosine_halfvec")
    sql = str(stmt.compile(passages_engine))
    assert "ORDER BY CAST(subvector(passages.embedding, 1, 96) AS HALFVEC(96)) <=> " in sql, sql


def test_filtered_search_keeps_k_rows_and_recall(session: Session) -> None:
    tenant = 3
    keep = np.flatnonzero(np.arange(ROWS) % TENANTS == tenant)
    truth = keep[exact_neighbors(VECTORS[keep], QUERY_VECTORS, 10)]
    found = []
    for query in QUERY_VECTORS:
        stmt = mrl_search(
            select(Passage).where(Passage.tenant == tenant), query, k=10, prefix="cosine_halfvec"
        )
        rows = session.execute(stmt).all()
        assert len(rows) == 10
        assert all(passage.tenant == tenant for passage, _ in rows)
        found.append([passage.id for passage, _ in rows])
    assert recall_at_k(found, truth) >= 0.90


def test_funnel_of_index_only_prefixes(session: Session) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10)
    found = []
    for query in QUERY_VECTORS:
        stmt = Passage.mrl_search(query, k=10, prefix=[Passage.cosine_bit, Passage.cosine_halfvec])
        found.append([passage.id for passage, _ in session.execute(stmt)])
    assert recall_at_k(found, truth) >= 0.95


def test_attribute_and_name_choose_the_same_prefix(session: Session) -> None:
    by_name = Passage.mrl_search(QUERY_VECTORS[1], k=5, prefix="l2_vector")
    by_attribute = Passage.mrl_search(QUERY_VECTORS[1], k=5, prefix=Passage.l2_vector)
    assert [p.id for p, _ in session.execute(by_name)] == [
        p.id for p, _ in session.execute(by_attribute)
    ]


def test_aliased_entity_searches_its_own_alias(session: Session) -> None:
    alias = aliased(Passage)
    stmt = mrl_search(
        select(alias).where(alias.tenant < 20), QUERY_VECTORS[2], k=5, prefix=alias.cosine_halfvec
    )
    rows = session.execute(stmt).all()
    assert len(rows) == 5 and all(passage.tenant < 20 for passage, _ in rows)


def test_the_prefix_selects_as_an_expression(session: Session) -> None:
    values = session.execute(
        select(Passage.id, Passage.cosine_vector, Passage.inner_product_halfvec)
        .where(Passage.id < 3)
        .order_by(Passage.id)
    ).all()
    for row in values:
        head = VECTORS[row.id, :PREFIX]
        np.testing.assert_allclose(np.asarray(row.cosine_vector), head, rtol=1e-6)
        normalized = head / np.linalg.norm(head)
        np.testing.assert_allclose(np.asarray(row.inner_product_halfvec, dtype=np.float64), normalized, atol=2e-3)


def test_an_instance_has_no_prefix_value(session: Session) -> None:
    passage = session.get(Passage, 1)
    assert passage is not None
    with pytest.raises(AttributeError, match="index-only prefix"):
        passage.cosine_halfvec  # noqa: B018
    with pytest.raises(AttributeError):
        passage.cosine_halfvec = None  # type: ignore[assignment]


def test_distance_helper_is_the_prefix_spec_distance() -> None:
    kinds = {p.name: (p.stored, p.spec.distance) for p in prefixes_of(Passage.__table__)}
    assert kinds["inner_product_halfvec"] == (False, Distance.INNER_PRODUCT)


def test_the_recall_monitor_checks_index_only_searches(passages_engine: Engine) -> None:
    """Each sampled search is checked against the exact search, by tenant."""
    from mrl_pg.monitor import RecallMonitor

    expected = []
    with RecallMonitor.attach(passages_engine, 1.0, segment_column="tenant") as monitor, Session(
        passages_engine
    ) as session:
        for query in QUERY_VECTORS[:10]:
            rows = session.execute(
                mrl_search(select(Passage).where(Passage.tenant == 5), query, k=10,
                           prefix="cosine_halfvec")
            ).all()
            keep = np.flatnonzero(np.arange(ROWS) % TENANTS == 5)
            truth = keep[exact_neighbors(VECTORS[keep], query[None], 10)]
            expected.append(recall_at_k([[p.id for p, _ in rows]], truth))
        assert monitor.wait_idle(timeout=300)
        snapshot = monitor.snapshot()
    assert (snapshot.checked, snapshot.failed) == (10, 0)
    [segment] = [f for f in snapshot.segments if f.segment == "5"]
    assert segment.prefix == "cosine_halfvec"
    assert segment.recall == pytest.approx(np.mean(expected), abs=0.01)
