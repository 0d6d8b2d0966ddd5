"""Declaring prefixes on SQLAlchemy models and tables, and finding them again.

A prefix comes in two kinds:

- **stored** (the default): a column ``GENERATED ALWAYS AS (<prefix of the full vector>)
  STORED`` with an HNSW index. Its values sit in every row of the table;
- **index-only** (``stored=False``): only an HNSW index on the prefix expression itself. No
  column, nothing in the table's rows; searches order by the expression, which the index
  serves. The model still has the prefix as a read-only SQL expression.

The index is named ``ix_<table>_<name>_hnsw`` unless told otherwise. Once a prefix is part of
a table, its :class:`Prefix` travels in ``Column.info``: a stored prefix's in its own column's,
an index-only prefix's in its full vector column's (under :data:`INDEX_ONLY_KEY`), so that
search and migrations find it without any global registry, and a copy of the table
(``Table.to_metadata()``) carries it too.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any, Literal, NoReturn, overload

from sqlalchemy import Column, ColumnElement, Computed, Index, Label, Table, event
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import MappedColumn, mapped_column
from sqlalchemy.sql.schema import SchemaItem

from mrl_pg.errors import NotAVectorColumnError, PrefixConfigError, PrefixSelectionError
from mrl_pg.prefix.names import MAX_IDENTIFIER_LENGTH, default_index_name
from mrl_pg.prefix.spec import Distance, FullVector, PrefixSpec, Storage

#: Key under which a stored prefix column carries its :class:`Prefix` in ``Column.info``.
INFO_KEY = "mrl_pg"
#: Key under which a full vector column carries its index-only prefixes, a tuple of
#: :class:`Prefix`, in ``Column.info``.
INDEX_ONLY_KEY = "mrl_pg_index_only"

_generations = itertools.count(1)
_generation = 0


@dataclass(frozen=True)
class Prefix:
    """A prefix of a table, with everything needed to query or migrate it.

    ``column`` is the generated column of a stored prefix, None for an index-only one;
    ``name`` is the column's name, or the name an index-only prefix was declared under, and
    ``key`` the column's key (its attribute name on a model), or that same name."""

    spec: PrefixSpec
    table: Table
    full_column: Column[Any]
    index_name: str
    name: str
    key: str
    column: Column[Any] | None = None

    @property
    def stored(self) -> bool:
        return self.column is not None

    @property
    def value(self) -> ColumnElement[Any]:
        """The prefix as SQL: its column, or the expression over the full vector that its
        index is built on."""
        if self.column is not None:
            return self.column
        return self.spec.expression(self.full_column)


class IndexOnlyPrefix(hybrid_property[Any]):
    """A model's index-only prefix (``mrl_prefix(..., stored=False)``): on the class (or an
    ``aliased()`` one), the prefix as a read-only SQL expression, labelled with the
    attribute's name, to select, compare or order by; an instance has no value of it (the
    table holds none)."""

    def __init__(
        self, full_column: Column[Any], spec: PrefixSpec, index_name: str | None
    ) -> None:
        self.full_column = full_column
        self.spec = spec
        self.index_name = index_name
        super().__init__(self._no_value, expr=self._expression)

    def __set_name__(self, owner: type, name: str) -> None:
        self.__name__ = name
        _declare_when_attached(self.full_column, self.spec, self.full_column, self.index_name, name)

    def _expression(self, owner: Any) -> Label[Any]:
        full = getattr(owner, str(self.full_column.key))  # the class's, or an alias's
        return self.spec.expression(full).label(self.__name__)

    def _no_value(self, instance: object) -> NoReturn:
        raise AttributeError(
            f"{self.__name__} is an index-only prefix: the table holds no value of it; select "
            f"{type(instance).__name__}.{self.__name__} in a query to compute it"
        )


@overload
def mrl_prefix(
    full: MappedColumn[Any] | Column[Any],
    dims: int,
    *,
    distance: Distance | str = ...,
    storage: Storage | str = ...,
    m: int = ...,
    ef_construction: int = ...,
    index_name: str | None = ...,
    deferred: bool = ...,
    stored: Literal[True] = ...,
) -> MappedColumn[Any]: ...


@overload
def mrl_prefix(
    full: MappedColumn[Any] | Column[Any],
    dims: int,
    *,
    distance: Distance | str = ...,
    storage: Storage | str = ...,
    m: int = ...,
    ef_construction: int = ...,
    index_name: str | None = ...,
    deferred: bool = ...,
    stored: Literal[False],
) -> IndexOnlyPrefix: ...


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
    stored: bool = True,
) -> MappedColumn[Any] | IndexOnlyPrefix:
    """A prefix for a declarative model, placed beside the full vector::

        class Item(MRLSearchMixin, Base):
            __tablename__ = "items"
            id = mapped_column(Integer, primary_key=True)
            embedding = mapped_column(VECTOR(1536))
            embedding_mrl = mrl_prefix(embedding, 256)

    By default the prefix is a generated column, ``deferred``: it exists for the index, and
    loading it with every row would only cost bandwidth. With ``stored=False`` it is only an
    HNSW index on the prefix expression (no column: nothing added to the rows, and adding,
    resizing or dropping it never writes a row); ``Item.embedding_mrl`` is then that
    expression, to select or compare, and an instance has no value of it.
    """
    full_column = full.column if isinstance(full, MappedColumn) else full
    spec = _declare(full_column, dims, distance, storage, m, ef_construction, index_name)
    if not stored:
        return IndexOnlyPrefix(full_column, spec, index_name)
    prefix = mapped_column(spec.sql_type(), _generated(spec, full_column), deferred=deferred)
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
    stored: bool = True,
) -> ColumnElement[Any]:
    """Add a prefix and its HNSW index to a Core ``Table``: a generated column (returned), or
    with ``stored=False`` only the index on the prefix expression (the expression, labelled
    ``name``, is returned).

    ``name`` defaults to ``<full column>_<dims>``.
    """
    full = _table_column(table, full_column)
    spec = _declare(full, dims, distance, storage, m, ef_construction, index_name)
    prefix_name = name or f"{full.name}_{dims}"
    if prefix_name in table.c or any(p.name == prefix_name for p in prefixes_of(table)):
        raise PrefixConfigError(f"table {table.name!r} already has a column {prefix_name!r}")
    if not stored:
        _declare_when_attached(full, spec, full, index_name, prefix_name)
        return spec.expression(full).label(prefix_name)
    column: Column[Any] = Column(prefix_name, spec.sql_type(), _generated(spec, full))
    _declare_when_attached(column, spec, full, index_name)
    table.append_column(column)
    return column


def prefixes_of(table: Table) -> list[Prefix]:
    """Every prefix declared on ``table``: stored ones in column order, each index-only one
    after its full vector column. A copy of a table (``Table.to_metadata()``) has the
    prefixes of the original, on its own columns."""
    found = []
    for column in table.columns:
        stored = column.info.get(INFO_KEY)
        declared = [stored] if isinstance(stored, Prefix) else []
        declared += column.info.get(INDEX_ONLY_KEY, ())
        for prefix in declared:
            found.append(prefix if prefix.table is table else _rebound(prefix, table))
    return found


def _rebound(prefix: Prefix, table: Table) -> Prefix:
    """``prefix`` of a copy of its table, on the copy's columns."""
    full = table.c.get(str(prefix.full_column.key))
    if full is None:
        raise PrefixSelectionError(
            f"prefix {prefix.name!r} refers to column {prefix.full_column.name!r}, "
            f"which table {table.name!r} does not have"
        )
    column = table.c[prefix.key] if prefix.column is not None else None
    return replace(prefix, table=table, column=column, full_column=full)


def prefix_generation() -> int:
    """A number that changes whenever a prefix is attached to a table (a model with
    ``mrl_prefix()`` declared, ``add_prefix_column()`` called). Anything built from
    :func:`prefixes_of` and kept for later (search statement templates) keys on it."""
    return _generation


def hnsw_index(indexed: ColumnElement[Any], spec: PrefixSpec, name: str) -> Index:
    """The HNSW index on a prefix column or a labelled prefix expression, with the
    operator class its distance needs."""
    return Index(
        name,
        indexed,
        postgresql_using="hnsw",
        postgresql_with={"m": spec.m, "ef_construction": spec.ef_construction},
        postgresql_ops={indexed.key: spec.opclass},
    )


def _declare(
    full_column: Column[Any],
    dims: int,
    distance: Distance | str,
    storage: Storage | str,
    m: int,
    ef_construction: int,
    index_name: str | None,
) -> PrefixSpec:
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
    return spec


def _generated(spec: PrefixSpec, full_column: Column[Any]) -> SchemaItem:
    return Computed(spec.expression(full_column), persisted=True)


def _declare_when_attached(
    column: Column[Any],
    spec: PrefixSpec,
    full: Column[Any],
    index_name: str | None,
    index_only_name: str | None = None,
) -> None:
    """Once ``column`` is part of a table (now, if it is already): the HNSW index, the
    :class:`Prefix` in ``Column.info``, and the next prefix generation (moved on last, so a
    search statement built before this point is never filed under the new generation).

    ``column`` is the stored prefix's own column, or for an index-only prefix (named
    ``index_only_name``) its full vector column."""

    def declare(attached: Column[Any], table: Table) -> None:
        global _generation
        name = index_only_name or str(attached.name)
        index = index_name or default_index_name(table.name, name)
        if index_only_name is None:
            hnsw_index(attached, spec, index)
            attached.info[INFO_KEY] = Prefix(
                spec=spec,
                table=table,
                full_column=full,
                index_name=index,
                name=name,
                key=str(attached.key),
                column=attached,
            )
        else:
            hnsw_index(spec.expression(attached).label(name), spec, index)
            prefix = Prefix(
                spec=spec, table=table, full_column=attached, index_name=index, name=name, key=name
            )
            others = [p for p in attached.info.get(INDEX_ONLY_KEY, ()) if p.name != name]
            attached.info[INDEX_ONLY_KEY] = (*others, prefix)
        _generation = next(_generations)

    table = getattr(column, "table", None)
    if isinstance(table, Table):
        declare(column, table)
    else:
        event.listen(column, "after_parent_attach", declare)


def _table_column(table: Table, column: str | Column[Any]) -> Column[Any]:
    name = column if isinstance(column, str) else column.key
    found = table.c.get(name)
    if found is None:
        raise NotAVectorColumnError(f"table {table.name!r} has no column {name!r}")
    return found
