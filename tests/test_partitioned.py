"""A prefix declared on a partitioned model: an HNSW index on every partition (present and
future), and ``.mrl_search()`` correct across partitions and within one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Engine, Integer, MetaData, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix, mrl_search
from mrl_pg.load import copy_vectors
from mrl_pg.sql import install
from mrl_pg.tools.synthetic import exact_distances, exact_neighbors, mrl_like_vectors, queries_near
from mrl_pg.tools.synthetic import recall_at_k as recall
from tests.conftest import schema_engine

#: Every test here shares a large table, indexed once per module.
pytestmark = pytest.mark.slow

ROWS = 8_000
DIMS = 128
TENANTS = 4
QUERIES = 40
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=51)
QUERY_VECTORS = queries_near(VECTORS, QUERIES, seed=52)
TENANT_OF = np.arange(ROWS) % TENANTS


class Base(DeclarativeBase):
    metadata = MetaData()


class Shard(MRLSearchMixin, Base):
    __tablename__ = "shards"
    __table_args__: ClassVar[dict[str, str]] = {"postgresql_partition_by": "LIST (tenant)"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_64 = mrl_prefix(embedding, 64)


def hnsw_indexes(session: Session) -> dict[str, list[str]]:
    """Partition name -> names of its HNSW indexes on the prefix column."""
    rows = session.execute(text(
        "SELECT c.relname, i.relname FROM pg_inherits h "
        "JOIN pg_class c ON c.oid = h.inhrelid "
        "LEFT JOIN pg_index x ON x.indrelid = c.oid "
        "LEFT JOIN pg_class i ON i.oid = x.indexrelid "
        "AND i.relam = (SELECT oid FROM pg_am WHERE amname = 'hnsw') "
        "AND pg_get_indexdef(x.indexrelid) LIKE '%embedding_64 halfvec_cosine_ops%' "
        "WHERE h.inhparent = 'shards'::regclass ORDER BY 1, 2"
    )).all()
    found: dict[str, list[str]] = {}
    for partition, index in rows:
        found.setdefault(partition, [])
        if index is not None:
            found[partition].append(index)
    return found


@pytest.fixture(scope="module")
def session(database_url: str, server_engine: Engine) -> Iterator[Session]:
    """The partitions are loaded before their indexes are built, which is much faster than
    the other order; the last one is attached after the index: it must get one of its own."""
    with schema_engine(database_url, server_engine) as engine:
        table = Shard.__table__
        last = TENANTS - 1
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 0"))
            table.create(conn)  # type: ignore[attr-defined]
            for index in table.indexes:  # type: ignore[attr-defined]
                index.drop(conn)
            for tenant in range(last):
                conn.execute(text(
                    f"CREATE TABLE shards_{tenant} PARTITION OF shards FOR VALUES IN ({tenant})"
                ))
            conn.execute(text(f"CREATE TABLE shards_{last} (LIKE shards INCLUDING GENERATED)"))
            later = table.to_metadata(MetaData(), name=f"shards_{last}")  # type: ignore[attr-defined]
            in_last = TENANT_OF == TENANTS - 1
            for target, rows in ((table, np.flatnonzero(~in_last)), (later, np.flatnonzero(in_last))):
                copy_vectors(
                    conn, target, "embedding", VECTORS[rows],
                    {"id": rows.tolist(), "tenant": TENANT_OF[rows].tolist()},
                )
            for index in table.indexes:  # type: ignore[attr-defined]
                index.create(conn)
            conn.execute(text(
                f"ALTER TABLE shards ATTACH PARTITION shards_{last} FOR VALUES IN ({last})"
            ))
            conn.execute(text("ANALYZE shards"))
        with Session(engine) as session:
            yield session


def test_every_partition_has_the_prefix_index(session: Session) -> None:
    indexes = hnsw_indexes(session)
    assert sorted(indexes) == [f"shards_{t}" for t in range(TENANTS)]
    assert all(len(names) == 1 for names in indexes.values()), indexes
    counts = dict(session.execute(text(
        "SELECT tableoid::regclass::text, count(embedding_64) FROM shards GROUP BY 1"
    )).all())
    assert counts == {f"shards_{t}": ROWS // TENANTS for t in range(TENANTS)}


def test_search_across_partitions(session: Session) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10)
    found = []
    for query in QUERY_VECTORS:
        rows = session.execute(Shard.mrl_search(query, k=10)).all()
        ids = [shard.id for shard, _ in rows]
        expected = exact_distances(
            VECTORS[ids].astype(np.float64), query[None].astype(np.float64),
            Shard.embedding_64.info["mrl_pg"].spec.distance,
        )[0]
        np.testing.assert_allclose([d for _, d in rows], expected, atol=1e-5)
        assert len({TENANT_OF[i] for i in ids}) > 1 or len(ids) == 10
        found.append(ids)
    assert recall(found, truth) >= 0.95


def test_search_within_one_partition(session: Session) -> None:
    keep = np.flatnonzero(TENANT_OF == 2)
    truth = keep[exact_neighbors(VECTORS[keep], QUERY_VECTORS, 10)]
    found = []
    for query in QUERY_VECTORS:
        stmt = mrl_search(select(Shard).where(Shard.tenant == 2), query, 10)
        rows = session.execute(stmt).all()
        assert len(rows) == 10
        assert {shard.tenant for shard, _ in rows} == {2}
        found.append([shard.id for shard, _ in rows])
    assert recall(found, truth) >= 0.95


def _plan(session: Session, stmt: Any) -> str:
    sql = stmt.compile(session.get_bind(), compile_kwargs={"literal_binds": True})
    return "\n".join(session.execute(text(f"EXPLAIN {sql}")).scalars())


def test_plans_use_the_partition_indexes(session: Session) -> None:
    across = _plan(session, Shard.mrl_search(QUERY_VECTORS[0], k=10))
    for tenant in range(TENANTS):
        assert f"Index Scan using shards_{tenant}_embedding_64_idx" in across, across
    assert "Seq Scan" not in across, across
    one = _plan(session, mrl_search(select(Shard).where(Shard.tenant == 1), QUERY_VECTORS[0]))
    assert "Index Scan using shards_1_embedding_64_idx" in one, one
    assert "shards_0" not in one and "shards_2" not in one, "the filter prunes the others"


def test_sql_function_on_the_partitioned_table(session: Session) -> None:
    install(session.connection())
    query = QUERY_VECTORS[5]
    pks = session.execute(
        text("SELECT pk FROM mrl_search('shards', CAST(:q AS vector), 10)"),
        {"q": str(query.tolist())},
    ).scalars().all()
    python = session.execute(Shard.mrl_search(query, k=10)).all()
    assert [(pk["id"], pk["tenant"]) for pk in pks] == [(s.id, s.tenant) for s, _ in python]
    session.rollback()
