"""Filters keeping 1% and 0.1% of the rows: ``.mrl_search()`` returns k rows whenever at
least k match, with recall@10 >= 0.90 against the exact filtered search, with and without a
btree index on the filter column."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Engine, Integer, MetaData, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix, mrl_search
from mrl_pg.tools.synthetic import exact_neighbors, mrl_like_vectors, queries_near
from mrl_pg.tools.synthetic import recall_at_k as recall
from tests.conftest import schema_engine
from tests.data import create_and_load

#: Every test here shares a large table, indexed once per module.
pytestmark = pytest.mark.slow

ROWS = 20_000
DIMS = 128
QUERIES = 30
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=41)
QUERY_VECTORS = queries_near(VECTORS, QUERIES, seed=42)
#: Filter column -> modulus: ``row % modulus == value`` keeps 1 / modulus of the rows.
FILTERS = {"pct1": 100, "pct01": 1000}


class Base(DeclarativeBase):
    metadata = MetaData()


class Event(MRLSearchMixin, Base):
    __tablename__ = "filtered_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pct1: Mapped[int] = mapped_column(Integer)  # no index: the planner cannot help
    pct01: Mapped[int] = mapped_column(Integer)
    pct1_indexed: Mapped[int] = mapped_column(Integer, index=True)
    pct01_indexed: Mapped[int] = mapped_column(Integer, index=True)
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)
    embedding_32 = mrl_prefix(embedding, 32)


@pytest.fixture(scope="module")
def session(database_url: str, server_engine: Engine) -> Iterator[Session]:
    with schema_engine(database_url, server_engine) as engine:
        ids = np.arange(ROWS)
        columns = {"id": ids.tolist()}
        for name, modulus in FILTERS.items():
            columns[name] = columns[f"{name}_indexed"] = (ids % modulus).tolist()
        create_and_load(engine, Event.__table__, "embedding", VECTORS, columns)  # type: ignore[arg-type]
        with Session(engine) as session:
            yield session


def test_the_filtered_columns_are_as_selective_as_claimed(session: Session) -> None:
    assert session.scalar(text("SELECT count(*) FROM filtered_events WHERE pct1 = 5")) == ROWS // 100
    assert session.scalar(text("SELECT count(*) FROM filtered_events WHERE pct01 = 5")) == ROWS // 1000
    assert {i.name for i in Event.__table__.indexes} >= {  # type: ignore[attr-defined]
        "ix_filtered_events_pct1_indexed", "ix_filtered_events_pct01_indexed"
    }


@pytest.mark.parametrize("indexed", [False, True], ids=["no_btree", "btree"])
@pytest.mark.parametrize("name", FILTERS)
def test_k_rows_and_recall_with_default_settings(
    session: Session, name: str, indexed: bool
) -> None:
    modulus = FILTERS[name]
    column = getattr(Event, f"{name}_indexed" if indexed else name)
    found, truth = [], []
    started = time.perf_counter()
    for i, query in enumerate(QUERY_VECTORS):
        value = i % modulus
        keep = np.flatnonzero(np.arange(ROWS) % modulus == value)
        truth.append(keep[exact_neighbors(VECTORS[keep], query[None], 10)[0]])
        rows = session.execute(mrl_search(select(Event).where(column == value), query, 10)).all()
        assert len(rows) == 10, f"{len(rows)} rows for a filter matching {len(keep)}"
        assert all(getattr(event, name if not indexed else f"{name}_indexed") == value
                   for event, _ in rows)
        found.append([event.id for event, _ in rows])
    elapsed = time.perf_counter() - started
    score = recall(found, np.array(truth))
    print(f"{name} indexed={indexed}: recall@10 {score:.3f}, {QUERIES / elapsed:.0f} queries/s")
    assert score >= 0.90


def test_fewer_matches_than_k_returns_them_all(session: Session) -> None:
    stmt = mrl_search(
        select(Event).where(Event.pct01 == 7, Event.id < 3000), QUERY_VECTORS[0], 10
    )
    rows = session.execute(stmt).all()
    assert sorted(event.id for event, _ in rows) == [7, 1007, 2007]
