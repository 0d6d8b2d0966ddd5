"""Reading a table's prefixes back from the PostgreSQL catalog.

A prefix is recognised by catalog facts only, never by reading SQL text (expressions are
neither parsed nor compared as text):

- a STORED generated column: its generation expression (``pg_attrdef``) depends, in
  ``pg_depend``, on exactly one other column of the table (the full vector) and on pgvector's
  ``subvector``, and maybe ``l2_normalize`` or ``binary_quantize`` (functions of an extension
  are recorded there; PostgreSQL's built-ins are pinned and are not);
- a column an online change keeps current (:mod:`mrl_pg.alembic.online.trigger`): a trigger
  named after the column whose ``UPDATE OF`` list (``pg_trigger.tgattr``) is the full vector
  and the column itself;
- an index-only prefix: a valid HNSW index on one expression, with no predicate, whose
  expression depends (``pg_depend`` of the index) on exactly one column of the table and on
  pgvector's ``subvector``. Its dimensions and storage are the index column's type; its name
  is ``<name>`` for an index named ``ix_<table>_<name>_hnsw``, else the index's name. The
  staging index of an unfinished online change (``..._next``) is not a prefix yet.

Dimensions and storage come from the column's type, the full vector's from its own, the
distance from the operator class of the column's HNSW index (else, for a generated column,
from whether it calls ``l2_normalize``), and the HNSW parameters from the index's
``reloptions``. Staging columns of an unfinished online change are never prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.change import STAGING_INDEX_SUFFIX, STAGING_SUFFIX
from mrl_pg.alembic.online.trigger import TRIGGER_PREFIX, trigger_name
from mrl_pg.prefix.names import default_index_name
from mrl_pg.prefix.spec import Distance, Storage
from mrl_pg.sqltext import TableRef

_COLUMNS_SQL = text(
    """
    SELECT a.attnum AS number, a.attname AS name, t.typname AS type, a.atttypmod AS dims
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
    """
)
def _columns_read(catalog: str, object_id: str, table_id: str, own_column: str) -> str:
    """SQL: the columns of table ``table_id`` (other than ``own_column``) that object
    ``object_id`` of catalog ``catalog`` depends on, as ``pg_depend`` records them."""
    return (
        "ARRAY(SELECT DISTINCT dep.refobjsubid FROM pg_depend dep "
        f"WHERE dep.classid = '{catalog}'::regclass AND dep.objid = {object_id} "
        f"AND dep.refclassid = 'pg_class'::regclass AND dep.refobjid = {table_id} "
        f"AND dep.refobjsubid NOT IN (0, {own_column}))"
    )


def _vector_functions_called(catalog: str, object_id: str) -> str:
    """SQL: the names of the ``vector`` extension's functions that object ``object_id`` of
    catalog ``catalog`` depends on (an extension's functions are recorded there; PostgreSQL's
    built-ins are pinned and are not)."""
    return (
        "ARRAY(SELECT p.proname::text FROM pg_depend dep "
        "JOIN pg_proc p ON p.oid = dep.refobjid "
        "JOIN pg_depend member ON member.classid = 'pg_proc'::regclass "
        "AND member.objid = p.oid AND member.deptype = 'e' "
        "AND member.refclassid = 'pg_extension'::regclass "
        "JOIN pg_extension e ON e.oid = member.refobjid AND e.extname = 'vector' "
        f"WHERE dep.classid = '{catalog}'::regclass AND dep.objid = {object_id} "
        "AND dep.refclassid = 'pg_proc'::regclass)"
    )


#: Each STORED generated column: the other columns of the table its expression reads, and
#: the functions of the ``vector`` extension it calls.
_GENERATED_SQL = text(
    f"""
    SELECT a.attnum AS number,
           {_columns_read("pg_attrdef", "d.oid", "a.attrelid", "a.attnum")} AS reads,
           {_vector_functions_called("pg_attrdef", "d.oid")} AS calls
    FROM pg_attribute a
    JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = to_regclass(:table) AND a.attgenerated = 's' AND NOT a.attisdropped
    """
)
#: mrl_pg's triggers on the table, with the columns of their ``UPDATE OF`` list.
_TRIGGERS_SQL = text(
    """
    SELECT t.tgname AS name, t.tgattr::int2[] AS columns
    FROM pg_trigger t
    WHERE t.tgrelid = to_regclass(:table) AND NOT t.tgisinternal AND t.tgname LIKE :pattern
    """
)
_HNSW_INDEXES_SQL = text(
    """
    SELECT x.indkey[0] AS number, c.relname AS index_name, opc.opcname AS opclass,
           c.reloptions AS options
    FROM pg_index x
    JOIN pg_class c ON c.oid = x.indexrelid
    JOIN pg_am am ON am.oid = c.relam AND am.amname = 'hnsw'
    LEFT JOIN pg_opclass opc ON opc.oid = x.indclass[0]
    WHERE x.indrelid = to_regclass(:table) AND x.indnatts = 1
    ORDER BY c.relname DESC
    """
)
#: Each valid HNSW index on one expression: its type, the columns it reads, the functions of
#: the ``vector`` extension it calls.
_EXPRESSION_INDEXES_SQL = text(
    f"""
    SELECT c.relname AS index_name, t.typname AS type, ia.atttypmod AS dims,
           opc.opcname AS opclass, c.reloptions AS options,
           {_columns_read("pg_class", "x.indexrelid", "x.indrelid", "0")} AS reads,
           {_vector_functions_called("pg_class", "x.indexrelid")} AS calls
    FROM pg_index x
    JOIN pg_class c ON c.oid = x.indexrelid
    JOIN pg_am am ON am.oid = c.relam AND am.amname = 'hnsw'
    JOIN pg_attribute ia ON ia.attrelid = x.indexrelid AND ia.attnum = 1
    JOIN pg_type t ON t.oid = ia.atttypid
    LEFT JOIN pg_opclass opc ON opc.oid = x.indclass[0]
    WHERE x.indrelid = to_regclass(:table) AND x.indnatts = 1 AND x.indkey[0] = 0
      AND x.indpred IS NULL AND x.indisvalid
    ORDER BY c.relname
    """
)
_FULL_TYPES = ("vector", "halfvec")
_PREFIX_TYPES = tuple(storage.value for storage in Storage)
_DISTANCE_BY_OPCLASS_SUFFIX = {distance.opclass_suffix: distance for distance in Distance}


@dataclass(frozen=True)
class _Source:
    """How a column is computed: from column ``full`` of the table, with ``l2_normalize``
    (True), without (False), or as far as the catalog tells, unknown (None)."""

    full: int
    normalized: bool | None


def table_exists(connection: Connection, table: str, schema: str | None) -> bool:
    found = connection.execute(
        text("SELECT to_regclass(:t) IS NOT NULL"), {"t": TableRef(table, schema).sql}
    ).scalar_one()
    return bool(found)


def reflect_prefixes(
    connection: Connection, table: str, schema: str | None
) -> dict[str, MRLPrefix]:
    """The table's prefixes by name (see the module's documentation for what makes a column
    or an index a prefix)."""
    params = {"table": TableRef(table, schema).sql}
    columns = {row.number: row for row in connection.execute(_COLUMNS_SQL, params)}
    names = {row.name: number for number, row in columns.items()}
    sources = _generated_sources(connection, params) | _trigger_sources(
        connection, params, names
    )
    indexes = {row.number: row for row in connection.execute(_HNSW_INDEXES_SQL, params)}
    found: dict[str, MRLPrefix] = {}
    for number, source in sources.items():
        column, full = columns[number], columns.get(source.full)
        if (
            full is None
            or column.name.endswith(STAGING_SUFFIX)
            or column.type not in _PREFIX_TYPES
            or full.type not in _FULL_TYPES
            or column.dims <= 0
            or full.dims <= 0
        ):
            continue
        index = indexes.get(number)
        options = dict(option.split("=", 1) for option in (index.options if index else None) or ())
        found[column.name] = MRLPrefix(
            column=column.name,
            full_column=full.name,
            full_dims=full.dims,
            dims=column.dims,
            distance=_distance(column.type, index.opclass if index else None, source).value,
            storage=column.type,
            m=int(options.get("m", 16)),
            ef_construction=int(options.get("ef_construction", 64)),
            full_type=full.type,
            index_name=index.index_name if index else None,
        )
    return _index_only_prefixes(connection, params, table, columns) | found


def _index_only_prefixes(
    connection: Connection, params: dict[str, str], table: str, columns: dict[int, Any]
) -> dict[str, MRLPrefix]:
    found: dict[str, MRLPrefix] = {}
    for index in connection.execute(_EXPRESSION_INDEXES_SQL, params):
        full = columns.get(index.reads[0]) if len(index.reads) == 1 else None
        if (
            full is None
            or "subvector" not in index.calls
            or index.index_name.endswith(STAGING_INDEX_SUFFIX)
            or index.type not in _PREFIX_TYPES
            or full.type not in _FULL_TYPES
            or index.dims <= 0
            or full.dims <= 0
        ):
            continue
        name = _index_only_name(table, index.index_name)
        source = _Source(full=full.number, normalized="l2_normalize" in index.calls)
        options = dict(option.split("=", 1) for option in index.options or ())
        found[name] = MRLPrefix(
            column=name,
            full_column=full.name,
            full_dims=full.dims,
            dims=index.dims,
            distance=_distance(index.type, index.opclass, source).value,
            storage=index.type,
            m=int(options.get("m", 16)),
            ef_construction=int(options.get("ef_construction", 64)),
            full_type=full.type,
            index_name=index.index_name,
            stored=False,
        )
    return found


def _index_only_name(table: str, index_name: str) -> str:
    """The name of the index-only prefix whose index is ``index_name``: ``<name>`` when the
    index has the name mrl_pg gives it, ``ix_<table>_<name>_hnsw``, else the index's own."""
    head, tail = f"ix_{table}_", "_hnsw"
    if index_name.startswith(head) and index_name.endswith(tail):
        name = index_name[len(head) : -len(tail)]
        if name and default_index_name(table, name) == index_name:
            return name
    return index_name


def _generated_sources(connection: Connection, params: dict[str, str]) -> dict[int, _Source]:
    """The STORED generated columns computed with ``subvector`` from one other column."""
    return {
        row.number: _Source(full=row.reads[0], normalized="l2_normalize" in row.calls)
        for row in connection.execute(_GENERATED_SQL, params)
        if len(row.reads) == 1 and "subvector" in row.calls
    }


def _trigger_sources(
    connection: Connection, params: dict[str, str], names: dict[str, int]
) -> dict[int, _Source]:
    """The columns mrl_pg's triggers keep current: trigger ``trigger_name(column)``, fired by
    updates of the full vector and of the column."""
    pattern = TRIGGER_PREFIX.replace("_", "\\_") + "%"
    by_trigger = {trigger_name(name): number for name, number in names.items()}
    found: dict[int, _Source] = {}
    for row in connection.execute(_TRIGGERS_SQL, {**params, "pattern": pattern}):
        number = by_trigger.get(row.name)
        if number is None or number not in row.columns or len(set(row.columns)) != 2:
            continue
        [full] = set(row.columns) - {number}
        found[number] = _Source(full=full, normalized=None)
    return found


def _distance(storage: str, opclass: str | None, source: _Source) -> Distance:
    """The distance of a vector or halfvec prefix is its index's; a bit prefix's Hamming
    index says nothing of it, nor does its expression."""
    if storage != Storage.BIT.value and opclass is not None:
        known = _DISTANCE_BY_OPCLASS_SUFFIX.get(opclass.partition("_")[2])
        if known is not None:
            return known
    return Distance.INNER_PRODUCT if source.normalized else Distance.COSINE
