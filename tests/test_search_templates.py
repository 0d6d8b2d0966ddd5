"""Search statement templates: built once per target and options, shared by a prefix named
and the same prefix passed as an attribute, and never reused once the target's prefixes
change."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Engine, Integer, MetaData, Table, bindparam, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column
from sqlalchemy.schema import CreateColumn
from sqlalchemy.sql.cache_key import CacheKey, HasCacheKey

from mrl_pg import PrefixSelectionError, add_prefix_column, mrl_prefix, mrl_search
from mrl_pg.search import statement
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near, recall_at_k
from tests.data import create_and_load
from tests.models import Doc
from tests.test_search_sql import QUERY, sql

ROWS = 2_000
DIMS = 16
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=61)
QUERIES = queries_near(VECTORS, 20, seed=62)


class Base(DeclarativeBase):
    metadata = MetaData()


class Twin(Base):
    """A second table with a prefix named like one of ``Doc``'s."""

    __tablename__ = "twins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(768))
    cosine_vector = mrl_prefix(embedding, 128, storage="vector")


@pytest.fixture
def builds(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The options of every search statement built from scratch (not from a template)."""
    built: list[Any] = []
    plan_search = statement.plan_search

    def counting(base: Any, query: Any, options: Any) -> Any:
        built.append(options)
        return plan_search(base, query, options)

    monkeypatch.setattr(statement, "plan_search", counting)
    return built


def test_a_prefix_named_or_passed_as_attribute_shares_one_template(builds: list[Any]) -> None:
    by_name = Doc.mrl_search(QUERY, k=11, prefix="l2_vector")
    by_attribute = Doc.mrl_search(QUERY, k=11, prefix=Doc.l2_vector)
    by_column = Doc.mrl_search(QUERY, k=11, prefix=Doc.__table__.c.l2_vector)
    funnel = Doc.mrl_search(QUERY, k=11, prefix=[Doc.l2_bit, "l2_halfvec"])
    same_funnel = Doc.mrl_search(QUERY, k=11, prefix=("l2_bit", Doc.l2_halfvec))
    assert len(builds) == 2, "one template for the single prefix, one for the funnel"
    assert sql(by_name) == sql(by_attribute) == sql(by_column)
    assert "ORDER BY docs.l2_vector <->" in sql(by_attribute)
    assert sql(funnel) == sql(same_funnel)

    filtered = [
        mrl_search(select(Doc).where(Doc.tenant == tenant), QUERY, k=11, prefix=choice)
        for tenant, choice in ((1, "cosine_halfvec"), (2, Doc.cosine_halfvec))
    ]
    assert len(builds) == 3
    assert "WHERE docs.tenant = 2" in sql(filtered[1], literal=True)


def test_a_name_two_searched_tables_share_is_not_taken_for_the_attribute(
    builds: list[Any],
) -> None:
    joined = select(Doc.id, Twin.id.label("twin_id")).join(Twin, Twin.id == Doc.id)
    by_name = mrl_search(joined, QUERY, prefix="cosine_vector")
    by_twin = mrl_search(joined, QUERY, prefix=Twin.cosine_vector)
    by_doc = mrl_search(joined, QUERY, prefix=Doc.cosine_vector)
    assert "ORDER BY docs.cosine_vector <=>" in sql(by_name)
    assert "ORDER BY twins.cosine_vector <=>" in sql(by_twin)
    assert "ORDER BY docs.cosine_vector <=>" in sql(by_doc)
    mrl_search(joined, QUERY, prefix=Twin.cosine_vector)
    assert len(builds) == 4, "an ambiguous name is never kept as a template"


def test_a_search_carries_the_cache_key_sqlalchemy_would_compute() -> None:
    other_query = QUERY[::-1].copy()
    searches = [
        Doc.mrl_search(QUERY, k=7, prefix="cosine_halfvec"),
        Doc.mrl_search(other_query, k=7, prefix="cosine_halfvec"),
        mrl_search(select(Doc.id).where(Doc.tenant == 3), other_query, prefix="l2_vector"),
    ]
    for search in searches:
        shared = search._generate_cache_key()
        computed = HasCacheKey._generate_cache_key(search)
        assert shared is not None and computed is not None
        assert shared.key == computed.key
        assert list(shared.bindparams) == list(computed.bindparams)
        if "params" not in CacheKey._fields:  # SQLAlchemy 2.0 keys values with the structure
            continue
        assert shared.params is not None and computed.params is not None
        assert shared.params.keys() == computed.params.keys()
        assert all(shared.params[name] is computed.params[name] for name in computed.params)
    narrowed = searches[0].where(Doc.tenant == 4)
    narrowed_key = narrowed._generate_cache_key()
    assert narrowed_key is not None and narrowed_key.key != searches[0]._generate_cache_key().key


def test_an_aliased_entity_attribute_finds_its_prefix() -> None:
    doc = aliased(Doc)
    stmt = mrl_search(select(doc).where(doc.tenant == 5), QUERY, prefix=doc.cosine_vector)
    assert "ORDER BY docs_1.cosine_vector <=>" in sql(stmt)


@pytest.fixture
def growing_table(engine: Engine) -> Iterator[Table]:
    """A table with one prefix, loaded; each test declares more on its own ``Table``."""
    table = Table(
        "growing",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("embedding", VECTOR(DIMS)),
    )
    add_prefix_column(table, "embedding", 4, storage="vector")
    create_and_load(engine, table, "embedding", VECTORS, {"id": list(range(ROWS))})
    yield table


def test_a_prefix_added_after_a_search_is_searched_with(
    engine: Engine, growing_table: Table
) -> None:
    table = growing_table
    filtered = select(table).where(table.c.id % 2 == 0)
    with engine.connect() as conn:
        assert len(conn.execute(mrl_search(table, QUERIES[0], k=5)).all()) == 5
        assert len(conn.execute(mrl_search(filtered, QUERIES[0], k=5)).all()) == 5

        column = add_prefix_column(table, "embedding", 8, storage="halfvec")
        conn.execute(
            text(f"ALTER TABLE growing ADD COLUMN {CreateColumn(column).compile(conn)}")
        )
        next(i for i in table.indexes if i.name == "ix_growing_embedding_8_hnsw").create(conn)
        conn.execute(text("ANALYZE growing"))

        for target in (table, filtered):
            with pytest.raises(PrefixSelectionError, match="several prefixes"):
                mrl_search(target, QUERIES[0], k=5)
        searched = mrl_search(table, QUERIES[0], k=5, prefix="embedding_8")
        compiled = searched.compile(conn, compile_kwargs={"literal_binds": True})
        assert "ORDER BY growing.embedding_8 <=>" in str(compiled)
        plan = "\n".join(conn.execute(text(f"EXPLAIN {compiled}")).scalars())
        assert "Index Scan using ix_growing_embedding_8_hnsw" in plan, plan

        found = []
        for query in QUERIES:
            stmt = mrl_search(table, query, k=10, prefix=column, candidates=400)
            rows = conn.execute(stmt).all()
            assert rows[0]._fields == ("id", "embedding", "embedding_4", "embedding_8", "distance")
            found.append([row.id for row in rows])
        assert recall_at_k(found, exact_neighbors(VECTORS, QUERIES, 10)) >= 0.9

        rows = conn.execute(mrl_search(filtered, QUERIES[1], k=5, prefix="embedding_8")).all()
        assert len(rows) == 5 and all(row.id % 2 == 0 for row in rows)


def grouped_table(engine: Engine, name: str) -> Table:
    """A loaded table of the test vectors, each row in one of 8 groups (``grp``), with an
    8-dim prefix."""
    table = Table(
        name, MetaData(), Column("id", Integer, primary_key=True),
        Column("grp", Integer), Column("embedding", VECTOR(DIMS)),
    )
    add_prefix_column(table, "embedding", 8)
    ids = list(range(ROWS))
    create_and_load(engine, table, "embedding", VECTORS, {"id": ids, "grp": [i % 8 for i in ids]})
    return table


def test_concurrent_first_searches_of_one_shape_keep_their_own_filter_values(
    engine: Engine,
) -> None:
    """Threads that build the template of one ``select()`` shape at the same moment, each
    with its own filter value, each get rows of their own value only."""
    table = grouped_table(engine, "grouped")
    threads, searches_each = 4, 6
    start = threading.Barrier(threads)
    wrong: list[tuple[int, list[int]]] = []
    errors: list[BaseException] = []

    def search(group: int) -> None:
        try:
            start.wait(timeout=60)
            with engine.connect() as conn:
                for query in QUERIES[:searches_each]:
                    mine = select(table.c.id, table.c.grp).where(table.c.grp == group)
                    rows = conn.execute(mrl_search(mine, query, k=5)).all()
                    if len(rows) != 5 or any(row.grp != group for row in rows):
                        wrong.append((group, [row.grp for row in rows]))
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    statement._TEMPLATES.clear()  # a cold start: every thread builds the template at once
    workers = [threading.Thread(target=search, args=(group,)) for group in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors and not wrong


def test_values_a_select_was_given_with_params_reach_the_search(engine: Engine) -> None:
    table = grouped_table(engine, "tagged")
    shape = select(table.c.id, table.c.grp).where(table.c.grp == bindparam("group"))
    with engine.connect() as conn:
        for group in (3, 5, 3):
            search = mrl_search(shape.params(group=group), QUERIES[0], k=5)
            rows = conn.execute(search).all()
            assert len(rows) == 5 and {row.grp for row in rows} == {group}
        ordered = mrl_search(shape.params(group=6), QUERIES[0], k=5, prefix=[table.c.embedding_8])
        assert {row.grp for row in conn.execute(ordered)} == {6}
