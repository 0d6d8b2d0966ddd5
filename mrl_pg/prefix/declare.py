"""Declaring prefixes on SQLAlchemy models and tables, and finding them again.

A prefix is an ordinary column: ``GENERATED ALWAYS AS (<prefix of the full vector>) STORED``,
with an HNSW index named ``ix_<table>_<column>_hnsw`` unless told otherwise. Its
:class:`~mrl_pg.prefix.PrefixSpec` travels in ``Column.info`` so that search and migrations
can find it without any global registry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
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
class PrefixDeclaration:
    """What ``Column.info[INFO_KEY]`` holds for a prefix column."""

    spec: PrefixSpec
    full_column: Column[Any]
    index_name: str | None


@dataclass(frozen=True)
class Prefix:
    """A prefix column found on a table, with everything needed to query or migrate it."""

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
    prefix = mapped_column(spec.sql_type(), *extras, deferred=deferred, info=_info(
        spec, full_column, index_name))
    _index_when_attached(prefix.column, spec, index_name)
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
    column: Column[Any] = Column(
        column_name, spec.sql_type(), *extras, info=_info(spec, full, index_name)
    )
    _index_when_attached(column, spec, index_name)
    table.append_column(column)
    return column


def prefixes_of(table: Table) -> list[Prefix]:
    """Every prefix declared on ``table``, in column order."""
    found = []
    for column in table.columns:
        declaration = column.info.get(INFO_KEY)
        if not isinstance(declaration, PrefixDeclaration):
            continue
        full = table.c.get(str(declaration.full_column.key))
        if full is None:
            raise PrefixSelectionError(
                f"prefix {column.name!r} refers to column {declaration.full_column.name!r}, "
                f"which table {table.name!r} does not have"
            )
        found.append(
            Prefix(
                spec=declaration.spec,
                table=table,
                column=column,
                full_column=full,
                index_name=declaration.index_name or default_index_name(table.name, column.name),
            )
        )
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


def _info(spec: PrefixSpec, full: Column[Any], index_name: str | None) -> dict[str, Any]:
    return {INFO_KEY: PrefixDeclaration(spec=spec, full_column=full, index_name=index_name)}


def _index_when_attached(column: Column[Any], spec: PrefixSpec, index_name: str | None) -> None:
    """Once ``column`` is on its table: give it its index, and move the prefix generation on
    (after the column is in place, so a template built before this point is never filed under
    the new generation)."""

    def create_index(attached: Column[Any], table: Table) -> None:
        global _generation
        hnsw_index(attached, spec, index_name or default_index_name(table.name, attached.name))
        _generation = next(_generations)

    event.listen(column, "after_parent_attach", create_index)


def _table_column(table: Table, column: str | Column[Any]) -> Column[Any]:
    name = column if isinstance(column, str) else column.key
    found = table.c.get(name)
    if found is None:
        raise NotAVectorColumnError(f"table {table.name!r} has no column {name!r}")
    return found
