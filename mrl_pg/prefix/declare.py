"""Declaring prefixes on SQLAlchemy models and tables, and finding them again.

A prefix is an ordinary column: ``GENERATED ALWAYS AS (<prefix of the full vector>) STORED``,
with an HNSW index named ``ix_<table>_<column>_hnsw`` unless told otherwise. Once the column is
part of a table, its :class:`Prefix` travels in ``Column.info``, so that search and migrations
find it without any global registry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Column, Computed, Index, Table, event
from sqlalchemy.orm import MappedColumn, mapped_column
from sqlalchemy.sql.schema import SchemaItem

from mrl_pg.errors import NotAVectorColumnError, PrefixConfigError, PrefixSelectionError
from mrl_pg.prefix.names import MAX_IDENTIFIER_LENGTH, default_index_name
from mrl_pg.prefix.spec import Distance, FullVector, PrefixSpec, Storage

#: Key under which a prefix column carries its declaration in ``Column.info``.
INFO_KEY = "mrl_pg"

_generations = itertools.count(1)
_generation = 0


@dataclass(frozen=True)
class Prefix:
    """A prefix column of a table, with everything needed to query or migrate it. It is kept
    in the prefix column's ``Column.info`` once the column is part of a table."""

    spec: PrefixSpec
    table: Table
    column: Column[Any]
    full_column: Column[Any]
    index_name: str

    @property
    def name(self) -> str:
        return str(self.column.name)


def mrl_prefix(
    full: MappedColumn[Any] | Column[Any],
    dims: int,
    *,
    distance: Distance | str = Distance.COSINE,
    storage: Storage | str = Storage.HALFVEC,
    m: int = 16,
    ef_construction: int = 64,
    index_name: str | None = None,
    deferred: bool = True,
) -> MappedColumn[Any]:
    """A generated prefix column for a declarative model, placed beside the full vector::

        class Item(MRLSearchMixin, Base):
            __tablename__ = "items"
            id = mapped_column(Integer, primary_key=True)
            embedding = mapped_column(VECTOR(1536))
            embedding_256 = mrl_prefix(embedding, 256)

    The column is ``deferred`` by default: it exists for the index, and loading it with every
    row would only cost bandwidth.
    """
    full_column = full.column if isinstance(full, MappedColumn) else full
    spec, extras = _declare(full_column, dims, distance, storage, m, ef_construction, index_name)
    prefix = mapped_column(spec.sql_type(), *extras, deferred=deferred)
    _declare_when_attached(prefix.column, spec, full_column, index_name)
    return prefix


def add_prefix_column(
    table: Table,
    full_column: str | Column[Any],
    dims: int,
    *,
    name: str | None = None,
    distance: Distance | str = Distance.COSINE,
    storage: Storage | str = Storage.HALFVEC,
    m: int = 16,
    ef_construction: int = 64,
    index_name: str | None = None,
) -> Column[Any]:
    """Add a generated prefix column and its HNSW index to a Core ``Table``.

    ``name`` defaults to ``<full column>_<dims>``.
    """
    full = _table_column(table, full_column)
    spec, extras = _declare(full, dims, distance, storage, m, ef_construction, index_name)
    column_name = name or f"{full.name}_{dims}"
    if column_name in table.c:
        raise PrefixConfigError(f"table {table.name!r} already has a column {column_name!r}")
    column: Column[Any] = Column(column_name, spec.sql_type(), *extras)
    _declare_when_attached(column, spec, full, index_name)
    table.append_column(column)
    return column


def prefixes_of(table: Table) -> list[Prefix]:
    """Every prefix declared on ``table``, in column order. A copy of a table
    (``Table.to_metadata()``) has the prefixes of the original, on its own columns."""
    found = []
    for column in table.columns:
        prefix = column.info.get(INFO_KEY)
        if not isinstance(prefix, Prefix):
            continue
        if prefix.table is not table:
            full = table.c.get(str(prefix.full_column.key))
            if full is None:
                raise PrefixSelectionError(
                    f"prefix {column.name!r} refers to column {prefix.full_column.name!r}, "
                    f"which table {table.name!r} does not have"
                )
            prefix = replace(prefix, table=table, column=column, full_column=full)
        found.append(prefix)
    return found


def prefix_generation() -> int:
    """A number that changes whenever a prefix column is attached to a table (a model with
    ``mrl_prefix()`` declared, ``add_prefix_column()`` called). Anything built from
    :func:`prefixes_of` and kept for later (search statement templates) keys on it."""
    return _generation


def hnsw_index(prefix_column: Column[Any], spec: PrefixSpec, name: str) -> Index:
    """The HNSW index for a prefix column, with the operator class its distance needs."""
    return Index(
        name,
        prefix_column,
        postgresql_using="hnsw",
        postgresql_with={"m": spec.m, "ef_construction": spec.ef_construction},
        postgresql_ops={prefix_column.key: spec.opclass},
    )


def _declare(
    full_column: Column[Any],
    dims: int,
    distance: Distance | str,
    storage: Storage | str,
    m: int,
    ef_construction: int,
    index_name: str | None,
) -> tuple[PrefixSpec, list[SchemaItem]]:
    if not isinstance(full_column, Column):
        raise NotAVectorColumnError(
            f"expected the full vector column (a Column or mapped_column), got {full_column!r}"
        )
    full = FullVector.from_type(full_column.type, str(full_column.name or "the full vector"))
    spec = PrefixSpec.create(
        dims, full, distance=distance, storage=storage, m=m, ef_construction=ef_construction
    )
    if index_name is not None and not 0 < len(index_name) <= MAX_IDENTIFIER_LENGTH:
        raise PrefixConfigError(
            f"index name {index_name!r} must have 1 to {MAX_IDENTIFIER_LENGTH} characters"
        )
    return spec, [Computed(spec.expression(full_column), persisted=True)]


def _declare_when_attached(
    column: Column[Any], spec: PrefixSpec, full: Column[Any], index_name: str | None
) -> None:
    """Once ``column`` is part of a table: its HNSW index, its :class:`Prefix` in
    ``column.info``, and the next prefix generation (moved on last, so a search statement
    built before this point is never filed under the new generation)."""

    def declare(attached: Column[Any], table: Table) -> None:
        global _generation
        name = index_name or default_index_name(table.name, attached.name)
        hnsw_index(attached, spec, name)
        attached.info[INFO_KEY] = Prefix(
            spec=spec, table=table, column=attached, full_column=full, index_name=name
        )
        _generation = next(_generations)

    event.listen(column, "after_parent_attach", declare)


def _table_column(table: Table, column: str | Column[Any]) -> Column[Any]:
    name = column if isinstance(column, str) else column.key
    found = table.c.get(name)
    if found is None:
        raise NotAVectorColumnError(f"table {table.name!r} has no column {name!r}")
    return found
