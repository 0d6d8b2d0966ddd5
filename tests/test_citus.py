"""Searches, migrations and the SQL function on a table sharded by Citus.

Runs when ``MRL_PG_CITUS_DSN`` names a Citus coordinator with pgvector (``bash
../shared/citus/citus-cluster.sh start`` starts a coordinator and two workers on this machine:
``postgresql+psycopg://postgres@127.0.0.1:9700/postgres``). Every table lives in a schema of
this module's own, dropped with its shards at the end.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateSchema, DropSchema

from mrl_pg import DistributionError, MRLSearchMixin, SearchParameterError, mrl_prefix, mrl_search
from mrl_pg.alembic import DistributedTableError, MRLPrefix
from mrl_pg.citus import distribute_table, is_distributed, make_reference_table
from mrl_pg.load import copy_vectors
from mrl_pg.sql import install
from mrl_pg.tools.server import sqlalchemy_url
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near
from mrl_pg.tools.synthetic import recall_at_k as recall

CITUS_DSN = os.environ.get("MRL_PG_CITUS_DSN", "")
pytestmark = pytest.mark.skipif(
    not CITUS_DSN,
    reason="MRL_PG_CITUS_DSN is not set: no Citus coordinator to test on (bash "
    "../shared/citus/citus-cluster.sh start starts one on 127.0.0.1:9700)",
)

ROWS = 40_000
DIMS = 64
SHARDS = 4
TENANTS = 40  # ``tenant = id % 40``: the distribution column
GROUPS = 64  # ``grp = id % 64`` keeps 1.6% of the rows, spread over every shard
K = 10
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=71)
QUERY_VECTORS = queries_near(VECTORS, 20, seed=72)
IDS = np.arange(ROWS)
SCHEMA = f"mrl_pg_citus_{uuid.uuid4().hex[:10]}"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class Item(MRLSearchMixin, Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer, primary_key=True)  # keys include it
    grp: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(20))
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_32 = mrl_prefix(embedding, 32)
    embedding_bit = mrl_prefix(embedding, 48, storage="bit")
    embedding_index_only = mrl_prefix(embedding, 24, storage="vector", stored=False)


items = Item.__table__


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(CITUS_DSN))
    with engine.begin() as conn:
        conn.execute(CreateSchema(SCHEMA))
    try:
        yield engine
    finally:
        with engine.begin() as conn:
            conn.execute(DropSchema(SCHEMA, cascade=True))
        engine.dispose()


@pytest.fixture(scope="module")
def loaded(engine: Engine) -> Engine:
    """``items`` distributed by tenant over ``SHARDS`` shards, loaded, then indexed."""
    with engine.begin() as conn:
        Base.metadata.create_all(conn)
        for index in items.indexes:
            index.drop(conn)
        distribute_table(conn, items, "tenant", shard_count=SHARDS)
    with engine.begin() as conn:
        copy_vectors(
            conn, items, "embedding", VECTORS,
            {"id": IDS.tolist(), "tenant": (IDS % TENANTS).tolist(),
             "grp": (IDS % GROUPS).tolist(), "title": [f"t{i}" for i in IDS]},
        )
        for index in items.indexes:
            index.create(conn)
    return engine


def search(target: Any, query: Any, k: int, **options: Any) -> Any:
    """``mrl_search`` with the halfvec prefix unless told otherwise."""
    return mrl_search(target, query, k, prefix=options.pop("prefix", "embedding_32"), **options)


def truth(mask: npt.NDArray[np.bool_] | None = None) -> npt.NDArray[np.int64]:
    """Exact top-``K`` ids of every query among the rows ``mask`` keeps."""
    kept = IDS if mask is None else IDS[mask]
    found: npt.NDArray[np.int64] = kept[exact_neighbors(VECTORS[kept], QUERY_VECTORS, K)]
    return found


def shard_tasks(conn: Connection, statement: Any) -> int:
    """How many shard tasks Citus plans for ``statement`` (its outermost ``Task Count``)."""
    sql = str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    plan = "\n".join(row[0] for row in conn.execute(text("EXPLAIN " + sql)))
    return max(int(count) for count in re.findall(r"Task Count: (\d+)", plan))


def test_the_table_is_sharded_with_its_prefixes_and_indexes(loaded: Engine) -> None:
    with loaded.connect() as conn:
        assert is_distributed(conn, items)
        shards = conn.execute(
            text("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = CAST(:t AS regclass)"),
            {"t": f"{SCHEMA}.items"},
        ).scalar_one()
        indexes = conn.execute(
            text("SELECT result FROM run_command_on_shards(CAST(:t AS regclass), "
                 "$cmd$SELECT count(*) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid "
                 "JOIN pg_am a ON a.oid = i.relam WHERE x.indrelid = '%s'::regclass "
                 "AND a.amname = 'hnsw'$cmd$)"),
            {"t": f"{SCHEMA}.items"},
        ).scalars().all()
    assert shards == SHARDS
    assert indexes == ["3"] * SHARDS  # two stored prefixes, one index-only


def test_unfiltered_search_across_all_shards(loaded: Engine) -> None:
    with loaded.connect() as conn:
        found = [
            [row.id for row in conn.execute(search(items, query, K))]
            for query in QUERY_VECTORS
        ]
        assert shard_tasks(conn, search(items, QUERY_VECTORS[0], K, distributed=True)) == SHARDS
    assert all(len(ids) == K for ids in found)
    assert recall(found, truth()) >= 0.9


def test_exact_distances_come_back(loaded: Engine) -> None:
    with loaded.connect() as conn:
        rows = conn.execute(search(select(items.c.id), QUERY_VECTORS[0], K)).all()
    vectors = VECTORS[[row.id for row in rows]]
    expected = 1 - vectors @ QUERY_VECTORS[0]  # the vectors are normalised
    np.testing.assert_allclose([row.distance for row in rows], expected, atol=1e-5)
    assert [row.distance for row in rows] == sorted(row.distance for row in rows)


def test_tenant_filter_runs_on_one_shard(loaded: Engine) -> None:
    tenant = 7
    base = select(items.c.id, items.c.tenant).where(items.c.tenant == tenant)
    with loaded.connect() as conn:
        found = [[row.id for row in conn.execute(search(base, q, K))] for q in QUERY_VECTORS]
        tenants = {row.tenant for row in conn.execute(search(base, QUERY_VECTORS[0], K))}
        assert shard_tasks(conn, search(base, QUERY_VECTORS[0], K, distributed=True)) == 1
    assert tenants == {tenant}
    assert all(len(ids) == K for ids in found)
    assert recall(found, truth(np.equal(IDS % TENANTS, tenant))) >= 0.9


def test_selective_filter_still_returns_k_rows(loaded: Engine) -> None:
    """1.6% of the rows match, spread over every shard: each shard's HNSW scan must run
    with the search's iterative scan and limits, or most shards return nothing."""
    base = select(items.c.id).where(items.c.grp == 3)
    with loaded.connect() as conn:
        found = [[row.id for row in conn.execute(search(base, q, K))] for q in QUERY_VECTORS]
    assert all(len(ids) == K for ids in found)
    assert recall(found, truth(IDS % GROUPS == 3)) >= 0.9


def test_settings_reach_the_shards_and_are_put_back(loaded: Engine) -> None:
    on_shards = select(items.c.id, func.current_setting("hnsw.ef_search").label("ef"))
    read_shards = select(func.current_setting("hnsw.ef_search")).select_from(items).distinct()
    with loaded.connect() as conn:
        conn.execute(text("SET hnsw.ef_search = 60"))  # the session's own value
        rows = conn.execute(search(on_shards, QUERY_VECTORS[0], K, ef_search=123)).all()
        assert {row.ef for row in rows} == {"123"}
        assert conn.execute(read_shards).scalars().all() == ["60"]  # put back, shards too
        assert conn.execute(text("SHOW hnsw.ef_search")).scalar_one() == "60"
        conn.execute(text("RESET hnsw.ef_search"))
        conn.commit()


def test_autocommit_connection_searches_in_its_own_transaction(loaded: Engine) -> None:
    on_shards = select(items.c.id, func.current_setting("hnsw.iterative_scan").label("scan"))
    with loaded.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rows = conn.execute(
            search(on_shards, QUERY_VECTORS[0], K, iterative_scan="strict_order")
        ).all()
        assert {row.scan for row in rows} == {"strict_order"}
        assert conn.execute(text("SHOW hnsw.iterative_scan")).scalar_one() == "off"
        assert not conn.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
        with pytest.raises(SearchParameterError, match="inside a transaction"):
            conn.execute(
                search(items, QUERY_VECTORS[0], K).execution_options(stream_results=True)
            )


def test_funnel_of_two_prefixes(loaded: Engine) -> None:
    funnel = ["embedding_bit", "embedding_32"]
    with loaded.connect() as conn:
        found = [
            [row.id for row in conn.execute(search(select(items.c.id), q, K, prefix=funnel))]
            for q in QUERY_VECTORS
        ]
    assert all(len(ids) == K for ids in found)
    assert recall(found, truth()) >= 0.85


def test_orm_entities(loaded: Engine) -> None:
    with Session(loaded) as session:
        rows = session.execute(Item.mrl_search(QUERY_VECTORS[0], K, prefix="embedding_32")).all()
        filtered = session.execute(
            search(select(Item).where(Item.tenant == 3), QUERY_VECTORS[0], K,
                       prefix="embedding_32")
        ).all()
    assert [type(item) for item, _ in rows] == [Item] * K
    assert [item.title for item, _ in rows] == [f"t{item.id}" for item, _ in rows]
    assert {item.tenant for item, _ in filtered} == {3}
    assert recall([[item.id for item, _ in rows]], truth()[:1]) >= 0.8


def test_distributed_form_ships_distances_not_vectors(loaded: Engine) -> None:
    distributed = Item.mrl_search(QUERY_VECTORS[0], K, prefix="embedding_32", distributed=True)
    sql = str(distributed.compile(dialect=postgresql.dialect()))
    first_stage = sql[sql.index("FROM (SELECT"):]
    assert "embedding <=>" in first_stage  # the exact distance, computed on the shards
    assert "items.embedding AS" not in first_stage
    assert "mrl_settings" not in sql


def test_a_search_changed_after_it_was_built_is_refused(loaded: Engine) -> None:
    changed = search(items, QUERY_VECTORS[0], K).where(text("true"))
    with loaded.connect() as conn, pytest.raises(SearchParameterError, match="distributed=True"):
        conn.execute(changed)


def test_single_node_form_is_kept_when_told(loaded: Engine) -> None:
    """``distributed=False`` runs the single-node statement, which Citus cannot plan on a
    distributed table: the choice is the caller's."""
    single_node = search(items, QUERY_VECTORS[0], K, distributed=False)
    assert "mrl_settings" in str(single_node.compile(dialect=postgresql.dialect()))


def test_sql_function_on_a_distributed_table(loaded: Engine) -> None:
    """The plain-SQL function is PL/pgSQL (a LANGUAGE sql function with parameters cannot
    read a distributed table); Citus plans its dynamic statement like any other."""
    with loaded.begin() as conn:
        conn.execute(text(f"SET LOCAL search_path = {SCHEMA}, public"))
        install(conn)
        found = [
            [row.pk["id"] for row in conn.execute(
                text("SELECT pk, distance FROM mrl_search(CAST(:t AS regclass), "
                     "CAST(:q AS vector), :k, prefix_column => 'embedding_32')"),
                {"t": f"{SCHEMA}.items", "q": str(q.tolist()), "k": K},
            )]
            for q in QUERY_VECTORS
        ]
    assert all(len(ids) == K for ids in found)
    assert recall(found, truth()) >= 0.9


def test_alembic_ops_in_plain_mode_and_online_refused(loaded: Engine) -> None:
    docs = Table(
        "docs", MetaData(schema=SCHEMA),
        Column("id", Integer, primary_key=True), Column("embedding", VECTOR(DIMS)),
    )
    small = MRLPrefix("embedding_8", "embedding", DIMS, 8, storage="vector")
    large = MRLPrefix("embedding_24", "embedding", DIMS, 24)
    with loaded.begin() as conn:
        docs.create(conn)
        distribute_table(conn, docs, "id", shard_count=4)
        copy_vectors(conn, docs, "embedding", VECTORS[:500], {"id": IDS[:500].tolist()})
    with loaded.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        op.add_mrl_prefix("docs", small, schema=SCHEMA)
        with pytest.raises(DistributedTableError, match="online=False"):
            op.resize_mrl_prefix("docs", small, large, schema=SCHEMA, online=True)
        with pytest.raises(DistributedTableError):
            op.drop_mrl_prefix("docs", small, schema=SCHEMA, online=True)
        op.resize_mrl_prefix("docs", small, large, schema=SCHEMA)
    with loaded.connect() as conn:
        on_shards = conn.execute(
            text("SELECT DISTINCT result FROM run_command_on_shards(CAST(:t AS regclass), "
                 "$cmd$SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                 "WHERE attrelid = '%s'::regclass AND attname = 'embedding_24'$cmd$)"),
            {"t": f"{SCHEMA}.docs"},
        ).scalars().all()
        filled = conn.execute(
            text(f'SELECT count(embedding_24) FROM "{SCHEMA}".docs')
        ).scalar_one()
    assert on_shards == ["halfvec(24)"]
    assert filled == 500
    with loaded.begin() as conn:
        Operations(MigrationContext.configure(conn)).drop_mrl_prefix("docs", large, schema=SCHEMA)
        columns = conn.execute(
            text("SELECT count(*) FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
                 "AND attnum > 0 AND NOT attisdropped"),
            {"t": f"{SCHEMA}.docs"},
        ).scalar_one()
        docs.drop(conn)
    assert columns == 2


def test_index_only_prefix_across_shards_and_on_one(loaded: Engine) -> None:
    """Each shard's expression index serves its first stage."""
    with Session(loaded) as session:
        found = [
            [item.id for item, _ in session.execute(
                search(Item, q, K, prefix=Item.embedding_index_only, candidates=80)
            )]
            for q in QUERY_VECTORS
        ]
        assert recall(found, truth()) >= 0.9
        tenant = select(Item).where(Item.tenant == 7)
        routed = search(tenant, QUERY_VECTORS[0], K, prefix="embedding_index_only")
        rows = session.execute(routed).all()
        assert len(rows) == K and all(item.tenant == 7 for item, _ in rows)
        assert shard_tasks(session.connection(), routed) == 1


def test_index_only_prefix_online_changes(loaded: Engine) -> None:
    """Online add, resize and drop of an index-only prefix: concurrent index builds and drops
    on every shard; a stored prefix's online change is refused, a plain switch is not."""
    notes = Table(
        "notes", MetaData(schema=SCHEMA),
        Column("id", Integer, primary_key=True), Column("embedding", VECTOR(DIMS)),
    )
    small = MRLPrefix("embedding_mrl", "embedding", DIMS, 8, stored=False)
    large = MRLPrefix("embedding_mrl", "embedding", DIMS, 24, storage="vector", stored=False)
    stored = MRLPrefix("embedding_mrl", "embedding", DIMS, 24, storage="vector")
    with loaded.begin() as conn:
        notes.create(conn)
        distribute_table(conn, notes, "id", shard_count=4)
        copy_vectors(conn, notes, "embedding", VECTORS[:500], {"id": IDS[:500].tolist()})

    def migrate(name: str, *args: Any, **kwargs: Any) -> None:
        with loaded.connect() as conn:
            context = MigrationContext.configure(conn)
            with context.begin_transaction():
                getattr(Operations(context), name)("notes", *args, schema=SCHEMA, **kwargs)

    def shard_indexes() -> list[str]:
        with loaded.connect() as conn:
            return sorted(conn.execute(text(
                "SELECT DISTINCT result FROM run_command_on_shards(CAST(:t AS regclass), "
                "$cmd$SELECT string_agg(format_type(a.atttypid, a.atttypmod), ',') "
                "FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indexrelid "
                "WHERE x.indrelid = '%s'::regclass AND x.indkey[0] = 0 AND x.indisvalid$cmd$)"
            ), {"t": f"{SCHEMA}.notes"}).scalars().all())

    migrate("add_mrl_prefix", small, online=True)
    assert shard_indexes() == ["halfvec(8)"]
    migrate("resize_mrl_prefix", small, large, online=True)
    assert shard_indexes() == ["vector(24)"]
    with pytest.raises(DistributedTableError, match="index-only"):
        migrate("resize_mrl_prefix", large, stored, online=True)
    migrate("resize_mrl_prefix", large, stored)
    migrate("resize_mrl_prefix", stored, large)
    migrate("drop_mrl_prefix", large, online=True)
    assert shard_indexes() in ([], [""])
    with loaded.begin() as conn:
        notes.drop(conn)


def test_reference_table_and_refusals(loaded: Engine) -> None:
    tags = Table("tags", MetaData(schema=SCHEMA), Column("id", Integer, primary_key=True))
    with loaded.begin() as conn:
        tags.create(conn)
        make_reference_table(conn, tags)
        assert is_distributed(conn, tags)
        with pytest.raises(DistributionError, match="shard_count"):
            distribute_table(conn, items, "tenant", shard_count=0)
        tags.drop(conn)

