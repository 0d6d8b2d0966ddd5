"""Models shared by the tests."""

from __future__ import annotations

from typing import Any

from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mrl_pg import MRLSearchMixin, mrl_prefix

DIMS = 768
PREFIX = 128
DISTANCES = ("cosine", "inner_product", "l2")
STORAGES = ("vector", "halfvec", "bit")
BIT_PREFIX = 384


class Base(DeclarativeBase):
    metadata = MetaData()


class Doc(MRLSearchMixin, Base):
    """One full vector with a prefix for every distance x storage pair."""

    __tablename__ = "docs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(String(40))
    embedding: Mapped[Any] = mapped_column(VECTOR(DIMS), deferred=True)

    cosine_vector = mrl_prefix(embedding, PREFIX, distance="cosine", storage="vector")
    cosine_halfvec = mrl_prefix(embedding, PREFIX, distance="cosine", storage="halfvec")
    cosine_bit = mrl_prefix(embedding, BIT_PREFIX, distance="cosine", storage="bit")
    inner_product_vector = mrl_prefix(embedding, PREFIX, distance="inner_product", storage="vector")
    inner_product_halfvec = mrl_prefix(
        embedding, PREFIX, distance="inner_product", storage="halfvec"
    )
    inner_product_bit = mrl_prefix(embedding, BIT_PREFIX, distance="inner_product", storage="bit")
    l2_vector = mrl_prefix(embedding, PREFIX, distance="l2", storage="vector")
    l2_halfvec = mrl_prefix(embedding, PREFIX, distance="l2", storage="halfvec")
    l2_bit = mrl_prefix(embedding, BIT_PREFIX, distance="l2", storage="bit")


class Note(MRLSearchMixin, Base):
    """A small table with a single prefix on a halfvec full column."""

    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    embedding: Mapped[Any] = mapped_column(HALFVEC(8))
    embedding_4 = mrl_prefix(embedding, 4)
