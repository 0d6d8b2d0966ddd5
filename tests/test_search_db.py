"""Search against a real PostgreSQL: recall against exact numpy ground truth, ordering,
filters, index use, and settings that stay scoped to one statement."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pgvector import Vector
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, aliased, sessionmaker

from mrl_pg import MRLQuery, mrl_search
from mrl_pg.tools.synthetic import (
    exact_distances,
    exact_neighbors,
    mrl_like_vectors,
    queries_near,
    recall_at_k,
)
from tests.conftest import schema_engine
from tests.data import create_and_load
from tests.models import DIMS, DISTANCES, STORAGES, Base, Doc

#: Every test here shares a large table, indexed once per module.
pytestmark = pytest.mark.slow

ROWS = 5_000
QUERIES = 50
TENANTS = 50  # a tenant filter keeps 2% of the rows

VECTORS = mrl_like_vectors(ROWS, DIMS, seed=7)
QUERY_VECTORS = queries_near(VECTORS, QUERIES, seed=8)


@pytest.fixture(scope="module")
def docs_engine(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    with schema_engine(database_url, server_engine) as engine:
        Base.metadata.create_all(engine, tables=[Doc.__table__])
        create_and_load_docs(engine)
        yield engine


def create_and_load_docs(engine: Engine) -> None:
    with engine.begin() as conn:
        Doc.__table__.drop(conn)
    create_and_load(
        engine,
        Doc.__table__,
        "embedding",
        VECTORS,
        {
            "id": list(range(ROWS)),
            "tenant": [i % TENANTS for i in range(ROWS)],
            "title": [f"doc {i}" for i in range(ROWS)],
        },
    )


@pytest.fixture
def session(docs_engine: Engine) -> Iterator[Session]:
    with Session(docs_engine) as session:
        yield session


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("distance", DISTANCES)
def test_recall_and_exact_order_with_defaults(
    session: Session, distance: str, storage: str
) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10, distance)
    found = []
    for query in QUERY_VECTORS:
        rows = session.execute(Doc.mrl_search(query, k=10, prefix=f"{distance}_{storage}")).all()
        assert len(rows) == 10
        ids = [doc.id for doc, _ in rows]
        distances = np.array([d for _, d in rows])
        expected = exact_distances(
            VECTORS[ids].astype(np.float64), query[None].astype(np.float64), _dist(distance)
        )[0]
        np.testing.assert_allclose(distances, expected, atol=1e-5)
        assert np.all(np.diff(distances) >= 0), "results must be nearest first"
        found.append(ids)
    recall = recall_at_k(found, truth)
    assert recall >= 0.95, f"recall@10 {recall:.3f} for {distance}/{storage}"


def _dist(name: str):  # type: ignore[no-untyped-def]
    from mrl_pg import Distance

    return Distance.parse(name)


def test_filter_keeping_two_percent(session: Session) -> None:
    tenant = 7
    keep = np.flatnonzero(np.arange(ROWS) % TENANTS == tenant)
    truth_local = exact_neighbors(VECTORS[keep], QUERY_VECTORS, 10)
    truth = keep[truth_local]
    found = []
    for query in QUERY_VECTORS:
        stmt = mrl_search(
            select(Doc).where(Doc.tenant == tenant), query, k=10, prefix="cosine_halfvec"
        )
        rows = session.execute(stmt).all()
        assert len(rows) == 10, "a filter matching >= k rows must return k rows"
        assert all(doc.tenant == tenant for doc, _ in rows)
        found.append([doc.id for doc, _ in rows])
    assert recall_at_k(found, truth) >= 0.90


def test_filter_matching_fewer_than_k_rows_returns_them_all(session: Session) -> None:
    stmt = mrl_search(
        select(Doc).where(Doc.id < 3), QUERY_VECTORS[0], k=10, prefix="cosine_vector"
    )
    assert sorted(doc.id for doc, _ in session.execute(stmt)) == [0, 1, 2]


def test_inner_stage_uses_the_prefix_index(session: Session, docs_engine: Engine) -> None:
    for name in ("cosine_halfvec", "inner_product_vector", "l2_bit"):
        stmt = Doc.mrl_search(QUERY_VECTORS[0], k=10, prefix=name)
        sql = stmt.compile(docs_engine, compile_kwargs={"literal_binds": True})
        plan = "\n".join(session.execute(text(f"EXPLAIN {sql}")).scalars())
        assert f"Index Scan using ix_docs_{name}_hnsw" in plan, plan


def test_funnel_bit_then_halfvec(session: Session) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10)
    found = []
    for query in QUERY_VECTORS:
        stmt = Doc.mrl_search(query, k=10, prefix=["cosine_bit", "cosine_halfvec"])
        found.append([doc.id for doc, _ in session.execute(stmt)])
    assert recall_at_k(found, truth) >= 0.95


def exactly(session: Session) -> None:
    """Make the session's transaction search exactly: without index scans, a search whose
    candidates cover every row it may return finds the true nearest rows."""
    session.execute(text("SET LOCAL enable_indexscan = off"))


@pytest.mark.parametrize(
    "as_query", [lambda v: v.tolist(), lambda v: v, lambda v: Vector(v)], ids=["list", "numpy", "Vector"]
)
def test_query_vector_kinds(session: Session, as_query) -> None:  # type: ignore[no-untyped-def]
    """Every kind of query vector finds what the same vector as a list finds."""
    def ids(query: Any) -> list[int]:
        stmt = Doc.mrl_search(query, k=5, prefix="l2_vector")
        return [doc.id for doc, _ in session.execute(stmt)]

    assert ids(as_query(QUERY_VECTORS[3])) == ids(QUERY_VECTORS[3].tolist())


def test_core_table_and_legacy_query(docs_engine: Engine, session: Session) -> None:
    """A Core table and a legacy ``Query`` return what the ORM entity's search returns."""
    table = Doc.__table__
    expected = [doc.id for doc, _ in session.execute(
        Doc.mrl_search(QUERY_VECTORS[1], k=5, prefix="cosine_vector")
    )]
    with docs_engine.connect() as conn:
        rows = conn.execute(mrl_search(table, QUERY_VECTORS[1], k=5, prefix="cosine_vector")).all()
    assert [row.id for row in rows] == expected
    assert rows[0].title == f"doc {expected[0]}"

    with sessionmaker(docs_engine, query_cls=MRLQuery)() as session:
        query = session.query(Doc).filter(Doc.tenant >= 0)
        results = query.mrl_search(QUERY_VECTORS[1], k=5, prefix="cosine_vector").all()  # type: ignore[attr-defined]
    assert [doc.id for doc, _ in results] == expected


def test_selected_columns_carry_through(session: Session) -> None:
    stmt = mrl_search(select(Doc.id, Doc.title), QUERY_VECTORS[2], k=3, prefix="cosine_vector")
    rows = session.execute(stmt).all()
    assert rows[0]._fields == ("id", "title", "distance")


def _settings(session: Session) -> tuple[str, str]:
    return (
        session.execute(text("SHOW hnsw.ef_search")).scalar_one(),
        session.execute(text("SHOW hnsw.iterative_scan")).scalar_one(),
    )


def test_settings_do_not_leak_to_the_next_statement(session: Session) -> None:
    before = _settings(session)
    stmt = mrl_search(
        select(Doc).where(Doc.tenant == 1), QUERY_VECTORS[0], k=10, candidates=300,
        prefix="cosine_vector",
    )
    assert len(session.execute(stmt).all()) == 10
    assert _settings(session) == before  # same transaction
    session.commit()
    assert _settings(session) == before  # next transaction on the same connection


def test_settings_are_applied_while_the_statement_runs(session: Session) -> None:
    # With ef_search 40 and no iterative scan, an HNSW scan returns at most 40 rows; asking for
    # 300 candidates works only because the statement raises ef_search itself.
    stmt = Doc.mrl_search(QUERY_VECTORS[0], k=200, candidates=300, prefix="cosine_vector")
    assert len(session.execute(stmt).all()) == 200
    # PostgreSQL plans a statement with the settings in effect before it runs; within the
    # transaction, those of the search above would make an exact scan look cheaper.
    session.commit()
    stmt = Doc.mrl_search(
        QUERY_VECTORS[0], k=200, candidates=300, ef_search=40, iterative_scan="off",
        prefix="cosine_vector",
    )
    assert len(session.execute(stmt).all()) == 40


def test_settings_restored_in_autocommit_mode_even_after_an_error(docs_engine: Engine) -> None:
    with docs_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        before = conn.execute(text("SHOW hnsw.ef_search")).scalar_one()
        conn.execute(Doc.mrl_search(QUERY_VECTORS[0], k=10, candidates=500, prefix="l2_vector"))
        assert conn.execute(text("SHOW hnsw.ef_search")).scalar_one() == before
        bad = mrl_search(
            select(Doc).where(text("1/0 = 1")), QUERY_VECTORS[0], k=10, candidates=500,
            prefix="l2_vector",
        )
        with pytest.raises(Exception, match="division by zero"):
            conn.execute(bad)
        assert conn.execute(text("SHOW hnsw.ef_search")).scalar_one() == before


def test_aliased_entity_with_filter(session: Session) -> None:
    doc = aliased(Doc)
    keep = np.flatnonzero(np.arange(ROWS) % TENANTS == 5)
    exactly(session)
    stmt = mrl_search(
        select(doc).where(doc.tenant == 5), QUERY_VECTORS[4], k=5, prefix=doc.cosine_vector,
        candidates=len(keep),
    )
    expected = keep[exact_neighbors(VECTORS[keep], QUERY_VECTORS[4:5], 5)[0]].tolist()
    assert [d.id for d, _ in session.execute(stmt)] == expected


def test_streaming_results(session: Session) -> None:
    stmt = Doc.mrl_search(QUERY_VECTORS[5], k=50, candidates=200, prefix="cosine_vector")
    streamed = [doc.id for doc, _ in session.execute(stmt.execution_options(yield_per=7))]
    assert streamed == [doc.id for doc, _ in session.execute(stmt)]
    assert len(streamed) == 50


def test_in_list_filters_of_different_lengths(session: Session) -> None:
    exactly(session)
    for tenants in ([3], [3, 4, 5], [6, 7]):
        keep = np.flatnonzero(np.isin(np.arange(ROWS) % TENANTS, tenants))
        stmt = mrl_search(
            select(Doc).where(Doc.tenant.in_(tenants)), QUERY_VECTORS[6], k=5, prefix="cosine_vector",
            candidates=len(keep),
        )
        rows = session.execute(stmt).all()
        assert len(rows) == 5 and {doc.tenant for doc, _ in rows} <= set(tenants)
        expected = keep[exact_neighbors(VECTORS[keep], QUERY_VECTORS[6:7], 5)[0]].tolist()
        assert [doc.id for doc, _ in rows] == expected
