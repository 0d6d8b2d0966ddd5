"""Reading a table's prefixes back from the PostgreSQL catalog."""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.change import STAGING_SUFFIX
from mrl_pg.alembic.online.trigger import TRIGGER_PREFIX
from mrl_pg.prefix.names import fit_identifier
from mrl_pg.sqltext import TableRef

_COLUMNS_SQL = text(
    """
    SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
           CASE WHEN a.attgenerated = 's' THEN pg_get_expr(d.adbin, d.adrelid) END AS generated
    FROM pg_attribute a
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE a.attrelid = to_regclass(:table) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attnum
    """
)
_TRIGGERS_SQL = text(
    """
    SELECT t.tgname AS name, p.prosrc AS body
    FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
    WHERE t.tgrelid = to_regclass(:table) AND NOT t.tgisinternal AND t.tgname LIKE :pattern
    """
)
_HNSW_INDEXES_SQL = text(
    """
    SELECT a.attname AS column_name, c.relname AS index_name, opc.opcname AS opclass,
           c.reloptions AS options
    FROM pg_index x
    JOIN pg_class c ON c.oid = x.indexrelid
    JOIN pg_am am ON am.oid = c.relam AND am.amname = 'hnsw'
    JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
    LEFT JOIN pg_opclass opc ON opc.oid = x.indclass[0]
    WHERE x.indrelid = to_regclass(:table) AND x.indnatts = 1
    ORDER BY c.relname DESC
    """
)
_TRIGGER_ASSIGNMENT = re.compile(r'NEW\.("(?:[^"]|"")*") := (.*);\s*RETURN NEW;', re.S)
_NEW_ROW = re.compile(r'\bNEW\.(?=")')
_DIMS = re.compile(r"\((\d+)\)$")
_DISTANCE_BY_OPCLASS = {"cosine_ops": "cosine", "ip_ops": "inner_product", "l2_ops": "l2"}


def table_exists(connection: Connection, table: str, schema: str | None) -> bool:
    found = connection.execute(
        text("SELECT to_regclass(:t) IS NOT NULL"), {"t": TableRef(table, schema).sql}
    ).scalar_one()
    return bool(found)


def reflect_prefixes(
    connection: Connection, table: str, schema: str | None
) -> dict[str, MRLPrefix]:
    """The table's prefix columns, with their HNSW index's operator class and parameters: STORED
    generated columns, or columns an online change keeps current by trigger, computed with
    ``subvector`` from one vector/halfvec column. Staging columns of an unfinished online
    change are left out."""
    params = {"table": TableRef(table, schema).sql}
    columns = connection.execute(_COLUMNS_SQL, params).all()
    types = {row.name: row.type for row in columns}
    by_trigger = _trigger_expressions(connection, params["table"])
    indexes = {row.column_name: row for row in connection.execute(_HNSW_INDEXES_SQL, params)}
    found: dict[str, MRLPrefix] = {}
    for row in columns:
        expression = row.generated or by_trigger.get(row.name) or ""
        if row.name.endswith(STAGING_SUFFIX) or "subvector(" not in expression:
            continue
        full_column = _unquote(expression.split("subvector(", 1)[1].split(",", 1)[0])
        full_type, _, full_dims = types.get(full_column, "").partition("(")
        storage = row.type.partition("(")[0]
        if full_type not in ("vector", "halfvec") or storage not in ("vector", "halfvec", "bit"):
            continue
        index = indexes.get(row.name)
        options = dict(option.split("=", 1) for option in (index.options if index else None) or ())
        opclass = index.opclass if index else None
        distance = _DISTANCE_BY_OPCLASS.get((opclass or "").partition("_")[2], "cosine")
        if storage == "bit" or not opclass:
            distance = "inner_product" if "l2_normalize" in expression else "cosine"
        found[row.name] = MRLPrefix(
            column=row.name,
            full_column=full_column,
            full_dims=int(full_dims.rstrip(")")),
            dims=int(_DIMS.search(row.type).group(1)),  # type: ignore[union-attr]
            distance=distance,
            storage=storage,
            m=int(options.get("m", 16)),
            ef_construction=int(options.get("ef_construction", 64)),
            full_type=full_type,
            index_name=index.index_name if index else None,
        )
    return found


def _trigger_expressions(connection: Connection, qualified: str) -> dict[str, str]:
    """Column name -> prefix expression, for the columns mrl_pg's triggers keep current."""
    found: dict[str, str] = {}
    rows = connection.execute(
        _TRIGGERS_SQL, {"table": qualified, "pattern": TRIGGER_PREFIX.replace("_", "\\_") + "%"}
    )
    for row in rows:
        match = _TRIGGER_ASSIGNMENT.search(row.body)
        if match is None:
            continue
        column = _unquote(match.group(1))
        if row.name == fit_identifier(TRIGGER_PREFIX + column):
            found[column] = _NEW_ROW.sub("", match.group(2))
    return found


def _unquote(identifier: str) -> str:
    identifier = identifier.strip()
    if identifier.startswith('"') and identifier.endswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier
