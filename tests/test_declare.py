"""Prefix declarations: the DDL they produce and the errors they raise (no database)."""

from __future__ import annotations

from typing import Any

import pytest
from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, mapped_column
from sqlalchemy.schema import CreateIndex, CreateTable

from mrl_pg import (
    IndexLimitError,
    NotAVectorColumnError,
    PrefixConfigError,
    UnknownDistanceError,
    UnknownStorageError,
    add_prefix_column,
    mrl_prefix,
    prefixes_of,
)

DIALECT = postgresql.dialect()


def items_table(full_type: Any = None) -> Table:
    return Table(
        "items",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("embedding", full_type if full_type is not None else VECTOR(1536)),
    )


def ddl(table: Table) -> tuple[str, list[str]]:
    create = str(CreateTable(table).compile(dialect=DIALECT))
    indexes = sorted(str(CreateIndex(ix).compile(dialect=DIALECT)) for ix in table.indexes)
    return create, indexes


@pytest.mark.parametrize(
    ("distance", "storage", "expression", "opclass"),
    [
        ("cosine", "vector", "CAST(subvector(embedding, 1, 256) AS VECTOR(256))", "vector_cosine_ops"),
        ("cosine", "halfvec", "CAST(subvector(embedding, 1, 256) AS HALFVEC(256))", "halfvec_cosine_ops"),
        ("inner_product", "vector", "CAST(l2_normalize(subvector(embedding, 1, 256)) AS VECTOR(256))", "vector_ip_ops"),
        ("inner_product", "halfvec", "CAST(l2_normalize(subvector(embedding, 1, 256)) AS HALFVEC(256))", "halfvec_ip_ops"),
        ("l2", "vector", "CAST(subvector(embedding, 1, 256) AS VECTOR(256))", "vector_l2_ops"),
        ("l2", "halfvec", "CAST(subvector(embedding, 1, 256) AS HALFVEC(256))", "halfvec_l2_ops"),
        ("cosine", "bit", "CAST(binary_quantize(subvector(embedding, 1, 256)) AS BIT(256))", "bit_hamming_ops"),
        ("inner_product", "bit", "CAST(binary_quantize(subvector(embedding, 1, 256)) AS BIT(256))", "bit_hamming_ops"),
    ],
)
def test_generated_column_and_index_per_distance_and_storage(
    distance: str, storage: str, expression: str, opclass: str
) -> None:
    table = items_table()
    add_prefix_column(table, "embedding", 256, distance=distance, storage=storage, m=24,
                      ef_construction=100)
    create, (index,) = ddl(table)
    assert f"embedding_256 {storage.upper()}(256) GENERATED ALWAYS AS ({expression}) STORED" in create
    assert index == (
        f"CREATE INDEX ix_items_embedding_256_hnsw ON items USING hnsw (embedding_256 {opclass}) "
        "WITH (m = 24, ef_construction = 100)"
    )


def test_declarative_model_with_two_prefixes_on_one_full_vector() -> None:
    class Base(DeclarativeBase):
        pass

    class Page(Base):
        __tablename__ = "pages"
        id = mapped_column(Integer, primary_key=True)
        body = mapped_column(String)
        embedding = mapped_column(HALFVEC(3072))
        embedding_bits = mrl_prefix(embedding, 1024, storage="bit")
        embedding_512 = mrl_prefix(embedding, 512, index_name="pages_fast_idx")

    table = Page.__table__
    create, indexes = ddl(table)  # type: ignore[arg-type]
    assert "embedding HALFVEC(3072)" in create
    assert "embedding_bits BIT(1024) GENERATED ALWAYS AS" in create
    assert [p.name for p in prefixes_of(table)] == ["embedding_bits", "embedding_512"]  # type: ignore[arg-type]
    assert [p.index_name for p in prefixes_of(table)] == [  # type: ignore[arg-type]
        "ix_pages_embedding_bits_hnsw",
        "pages_fast_idx",
    ]
    assert len(indexes) == 2
    assert Page.__mapper__.attrs["embedding_512"].deferred  # type: ignore[attr-defined]


def test_long_index_names_are_shortened_to_postgres_limit() -> None:
    table = Table("t" * 50, MetaData(), Column("embedding", VECTOR(8)))
    add_prefix_column(table, "embedding", 4, name="e" * 30)
    (prefix,) = prefixes_of(table)
    assert len(prefix.index_name) == 63


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"dims": 0}, PrefixConfigError, "must be positive"),
        ({"dims": -3}, PrefixConfigError, "must be positive"),
        ({"dims": 1536}, PrefixConfigError, "smaller than the full vector's 1536"),
        ({"dims": 4000}, PrefixConfigError, "smaller than the full vector's 1536"),
        ({"dims": 2.5}, PrefixConfigError, "must be an integer"),
        ({"dims": 64, "distance": "manhattan"}, UnknownDistanceError, "unknown distance 'manhattan'"),
        ({"dims": 64, "storage": "int8"}, UnknownStorageError, "unknown prefix storage 'int8'"),
        ({"dims": 64, "m": 1}, PrefixConfigError, r"HNSW m must be an integer in \[2, 100\]"),
        ({"dims": 64, "ef_construction": 2000}, PrefixConfigError, "ef_construction"),
        ({"dims": 64, "m": 40, "ef_construction": 64}, PrefixConfigError, "at least 2 \\* m"),
        ({"dims": 64, "index_name": "x" * 64}, PrefixConfigError, "1 to 63 characters"),
    ],
)
def test_bad_declarations(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    table = items_table()
    dims = kwargs.pop("dims")
    with pytest.raises(error, match=message):
        add_prefix_column(table, "embedding", dims, **kwargs)
    assert prefixes_of(table) == [] and not table.indexes


@pytest.mark.parametrize(
    ("full_type", "dims", "storage", "limit"),
    [(VECTOR(4096), 2048, "vector", 2000), (HALFVEC(8192), 4096, "halfvec", 4000),
     (VECTOR(16000), 4001, "halfvec", 4000)],
)
def test_prefix_over_pgvector_index_limits(full_type: Any, dims: int, storage: str, limit: int) -> None:
    with pytest.raises(IndexLimitError, match=f"over pgvector's HNSW limit of {limit} dims"):
        add_prefix_column(items_table(full_type), "embedding", dims, storage=storage)


def test_bit_prefix_allows_wide_prefixes() -> None:
    table = items_table(VECTOR(16000))
    add_prefix_column(table, "embedding", 8000, storage="bit")
    assert prefixes_of(table)[0].spec.dims == 8000


@pytest.mark.parametrize(
    ("full_type", "message"),
    [(String(), "not a pgvector VECTOR"), (BIT(64), "not a pgvector VECTOR"),
     (VECTOR(), "has no fixed dimension"), (VECTOR(16001), "pgvector vectors have 1 to 16000")],
)
def test_full_column_must_be_a_fixed_size_pgvector_column(full_type: Any, message: str) -> None:
    with pytest.raises(NotAVectorColumnError, match=message):
        add_prefix_column(items_table(full_type), "embedding", 4)


def test_unknown_full_column() -> None:
    with pytest.raises(NotAVectorColumnError, match="has no column 'vector'"):
        add_prefix_column(items_table(), "vector", 4)


def test_duplicate_prefix_column_name() -> None:
    table = items_table()
    add_prefix_column(table, "embedding", 64)
    with pytest.raises(PrefixConfigError, match="already has a column 'embedding_64'"):
        add_prefix_column(table, "embedding", 64)


def test_index_only_prefix_is_an_expression_index_and_no_column() -> None:
    table = items_table()
    prefix = add_prefix_column(table, "embedding", 256, distance="inner_product", stored=False)
    create, (index,) = ddl(table)
    assert "embedding_256" not in create
    assert index == (
        "CREATE INDEX ix_items_embedding_256_hnsw ON items USING hnsw "
        "(CAST(l2_normalize(subvector(embedding, 1, 256)) AS HALFVEC(256)) halfvec_ip_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )
    assert str(prefix.compile(dialect=DIALECT)) == (
        "CAST(l2_normalize(subvector(items.embedding, 1, 256)) AS HALFVEC(256))"
    )
    [declared] = prefixes_of(table)
    assert (declared.name, declared.stored, declared.column) == ("embedding_256", False, None)
    copy = prefixes_of(table.to_metadata(MetaData()))
    assert [(p.name, p.stored) for p in copy] == [("embedding_256", False)]


def test_index_only_prefix_name_in_use_is_refused() -> None:
    table = items_table()
    add_prefix_column(table, "embedding", 256, stored=False)
    with pytest.raises(PrefixConfigError, match="already has a column 'embedding_256'"):
        add_prefix_column(table, "embedding", 256, storage="vector")


def test_index_only_prefix_on_a_model_is_a_read_only_expression() -> None:
    class Base(DeclarativeBase):
        pass

    class Page(Base):
        __tablename__ = "pages"
        id = mapped_column(Integer, primary_key=True)
        embedding = mapped_column(VECTOR(1536))
        embedding_mrl = mrl_prefix(embedding, 512, storage="bit", stored=False)

    assert "embedding_mrl" not in Page.__table__.c
    [prefix] = prefixes_of(Page.__table__)
    assert (prefix.name, prefix.index_name) == ("embedding_mrl", "ix_pages_embedding_mrl_hnsw")
    assert str(Page.embedding_mrl.compile(dialect=DIALECT)).startswith(
        "CAST(binary_quantize(subvector(pages.embedding, 1, 512)) AS BIT(512))"
    )
