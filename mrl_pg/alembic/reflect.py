"""Reading a table's prefixes back from the PostgreSQL catalog."""

from __future__ import annotations

import re

from sqlalchemy import Connection, text

from mrl_pg.alembic.prefix_args import MRLPrefix

_PREFIXES_SQL = text(
    """
    SELECT a.attname AS column_name,
           format_type(a.atttypid, a.atttypmod) AS column_type,
           pg_get_expr(d.adbin, d.adrelid) AS expression,
           format_type(f.atttypid, f.atttypmod) AS full_type,
           ix.relname AS index_name, opc.opcname AS opclass, ix.reloptions AS options
    FROM pg_attribute a
    JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    JOIN pg_depend dep ON dep.classid = 'pg_attrdef'::regclass AND dep.objid = d.oid
         AND dep.refobjid = a.attrelid AND dep.refobjsubid > 0
    JOIN pg_attribute f ON f.attrelid = a.attrelid AND f.attnum = dep.refobjsubid
    LEFT JOIN LATERAL (
        SELECT c.relname, x.indclass[0] AS opclass_oid, c.reloptions
        FROM pg_index x
        JOIN pg_class c ON c.oid = x.indexrelid
        JOIN pg_am am ON am.oid = c.relam AND am.amname = 'hnsw'
        WHERE x.indrelid = a.attrelid AND x.indnatts = 1 AND x.indkey[0] = a.attnum
        ORDER BY c.relname LIMIT 1
    ) ix ON true
    LEFT JOIN pg_opclass opc ON opc.oid = ix.opclass_oid
    WHERE a.attrelid = to_regclass(:table) AND a.attgenerated = 's' AND NOT a.attisdropped
      AND pg_get_expr(d.adbin, d.adrelid) LIKE '%subvector(%'
    ORDER BY a.attnum
    """
)
_DIMS = re.compile(r"\((\d+)\)$")
_DISTANCE_BY_OPCLASS = {"cosine_ops": "cosine", "ip_ops": "inner_product", "l2_ops": "l2"}


def table_exists(connection: Connection, table: str, schema: str | None) -> bool:
    found = connection.execute(
        text("SELECT to_regclass(:t) IS NOT NULL"), {"t": _qualified(table, schema)}
    ).scalar_one()
    return bool(found)


def reflect_prefixes(
    connection: Connection, table: str, schema: str | None
) -> dict[str, MRLPrefix]:
    """The table's prefix columns: STORED generated columns computed with ``subvector`` from
    one vector/halfvec column, with their HNSW index's operator class and parameters."""
    found: dict[str, MRLPrefix] = {}
    for row in connection.execute(_PREFIXES_SQL, {"table": _qualified(table, schema)}):
        full_type, _, full_dims = row.full_type.partition("(")
        storage = row.column_type.partition("(")[0]
        if full_type not in ("vector", "halfvec") or storage not in ("vector", "halfvec", "bit"):
            continue
        options = dict(option.split("=", 1) for option in row.options or ())
        suffix = (row.opclass or "").partition("_")[2]
        distance = _DISTANCE_BY_OPCLASS.get(suffix, "cosine")
        if storage == "bit" or not row.opclass:
            distance = "inner_product" if "l2_normalize" in row.expression else "cosine"
        found[row.column_name] = MRLPrefix(
            column=row.column_name,
            full_column=_unquote(row.expression.split("subvector(", 1)[1].split(",", 1)[0]),
            full_dims=int(full_dims.rstrip(")")),
            dims=int(_DIMS.search(row.column_type).group(1)),  # type: ignore[union-attr]
            distance=distance,
            storage=storage,
            m=int(options.get("m", 16)),
            ef_construction=int(options.get("ef_construction", 64)),
            full_type=full_type,
            index_name=row.index_name,
        )
    return found


def _qualified(table: str, schema: str | None) -> str:
    name = '"' + table.replace('"', '""') + '"'
    return f'"{schema}".{name}' if schema else name


def _unquote(identifier: str) -> str:
    identifier = identifier.strip()
    if identifier.startswith('"') and identifier.endswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier
