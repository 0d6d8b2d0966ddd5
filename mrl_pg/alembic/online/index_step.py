"""The index step of an online change: build the staging index concurrently, or finish the
one an interrupted run left; the build's progress is logged.

PostgreSQL cannot build an index concurrently on a partitioned table, so there the index is
put together the way its manual describes for partitioned indexes: an index ``ON ONLY`` the
table and each partitioned partition (catalog entries, invalid while incomplete), then each
leaf partition's index built concurrently and attached to its parent's. The table's index
turns valid once every leaf's is attached. Each piece is looked at before it is built, so
rerunning an interrupted build carries on where it stopped; a piece built for another change
is dropped and built again.

At the swap, each partition's staging index takes the name PostgreSQL gives the index of a
plain prefix, ``<partition>_<column>_idx``, unless that name is in use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from alembic.operations import Operations
from sqlalchemy import Connection, text

from mrl_pg.alembic.checks import MigrationCheckError
from mrl_pg.alembic.online.change import OnlineChange, locked_ddl
from mrl_pg.alembic.progress import index_build_progress
from mrl_pg.prefix.names import fit_identifier
from mrl_pg.sqltext import TableRef, ident, literal

logger = logging.getLogger("alembic.mrl_pg")

_TREE_SQL = text(
    """
    SELECT t.relid::oid AS oid, t.parentrelid::oid AS parent_oid, c.relname AS name,
           n.nspname AS schema, t.isleaf AS leaf
    FROM pg_partition_tree(to_regclass(:table)) t
    JOIN pg_class c ON c.oid = t.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    ORDER BY t.level, c.relname
    """
)
_INDEX_SQL = text(
    """
    SELECT x.indrelid = to_regclass(:table)
               AND CASE WHEN CAST(:column AS name) IS NULL THEN x.indkey[0] = 0
                        ELSE a.attname = CAST(:column AS name) END AS ours,
           x.indisvalid AS valid, opc.opcname AS opclass, c.reloptions AS options,
           (SELECT atttypmod FROM pg_attribute WHERE attrelid = c.oid AND attnum = 1) AS dims,
           EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = c.oid
                   AND h.inhparent = to_regclass(:parent_index)) AS attached
    FROM pg_class c
    LEFT JOIN pg_index x ON x.indexrelid = c.oid
    LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
    LEFT JOIN pg_opclass opc ON opc.oid = x.indclass[0]
    WHERE c.oid = to_regclass(:index)
    """
)


@dataclass(frozen=True)
class PartitionIndex:
    """The staging index of one partition of the table an online change is applied to."""

    partition: TableRef
    leaf: bool
    #: The quoted, qualified name of the staging index of the partition's parent.
    parent_index: str
    column: str

    @property
    def staging(self) -> str:
        return fit_identifier(f"{self.partition.name}_{self.column}_idx", "_next")

    @property
    def final(self) -> str:
        return fit_identifier(f"{self.partition.name}_{self.column}_idx")

    def rename_sql(self) -> str:
        """A statement of the swap: take the final name, if it is free."""
        return (
            f"IF to_regclass({literal(self.partition.qualify(self.final))}) IS NULL THEN "
            f"ALTER INDEX {self.partition.qualify(self.staging)} RENAME TO {ident(self.final)}; "
            "END IF"
        )


def partition_indexes(connection: Connection, change: OnlineChange) -> list[PartitionIndex] | None:
    """The staging index of every partition, parents before children; ``None`` when the
    table is not partitioned."""
    table = change.table
    kind = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table.sql}
    ).scalar()
    if kind != "p":
        return None
    found: list[PartitionIndex] = []
    index_of: dict[int, str] = {}
    for row in connection.execute(_TREE_SQL, {"table": table.sql}):
        if row.parent_oid is None:
            index_of[row.oid] = table.qualify(change.staging_index)
            continue
        partition = TableRef(row.name, row.schema)
        member = PartitionIndex(partition, row.leaf, index_of[row.parent_oid], change.new.column)
        index_of[row.oid] = partition.qualify(member.staging)
        found.append(member)
    return found


def check_index_names(
    connection: Connection, change: OnlineChange, partitions: Sequence[PartitionIndex] | None
) -> None:
    """Before any DDL: the staging index names are free, or taken by an earlier run's."""
    names = [(change.table, change.staging_index)] + [
        (partition.partition, partition.staging) for partition in partitions or ()
    ]
    for table, name in names:
        row = connection.execute(_INDEX_SQL, _index_params(change, table, name)).first()
        if row is not None and not row.ours:
            raise MigrationCheckError(
                f"an index or table named {name!r} already exists in the schema of {table.sql}"
            )


def build_index(
    operations: Operations,
    change: OnlineChange,
    partitions: Sequence[PartitionIndex] | None,
) -> None:
    """Create, or complete, the staging index of ``change.table``; ``partitions`` are the
    table's (see :func:`partition_indexes`), None when it is not partitioned."""
    table = change.table
    if partitions is None:
        if _state(operations, change, table, change.staging_index, leaf=True) == "missing":
            _build_concurrently(operations, change, table, change.staging_index)
        return
    if _state(operations, change, table, change.staging_index, leaf=False) == "missing":
        operations.execute(
            locked_ddl(table, "index", [_on_only_sql(change, table, change.staging_index)])
        )
    for partition in partitions:
        target, name = partition.partition, partition.staging
        state = _state(operations, change, target, name, partition.leaf, partition.parent_index)
        if state == "attached":
            continue
        statements = []
        if state == "missing" and partition.leaf:
            _build_concurrently(operations, change, target, name)
        elif state == "missing":
            statements.append(_on_only_sql(change, target, name))
        statements.append(
            f"ALTER INDEX {partition.parent_index} ATTACH PARTITION {target.qualify(name)}"
        )
        operations.execute(locked_ddl(table, "index", statements))


def _build_concurrently(
    operations: Operations, change: OnlineChange, table: TableRef, name: str
) -> None:
    logger.info("building %s concurrently", name)
    with index_build_progress(operations.get_bind(), name):
        operations.execute(
            f"CREATE INDEX CONCURRENTLY {ident(name)} ON {table.sql} {change.index_definition}"
        )


def _state(
    operations: Operations,
    change: OnlineChange,
    table: TableRef,
    name: str,
    leaf: bool,
    parent_index: str | None = None,
) -> str:
    """How far staging index ``name`` of ``table`` got: ``"attached"`` to its parent's,
    ``"built"``, or ``"missing"``. A leftover that does not fit ``change``, or the invalid
    remains of an interrupted concurrent build, is dropped and reported missing. The name is
    known not to belong to anything else (:func:`check_index_names`)."""
    row = operations.get_bind().execute(
        _INDEX_SQL, _index_params(change, table, name, parent_index)
    ).first()
    if row is None:
        return "missing"
    spec = change.new.spec()
    wanted = {f"m={spec.m}", f"ef_construction={spec.ef_construction}"}
    fits = (
        row.opclass == spec.opclass
        and row.dims == spec.dims
        and set(row.options or ()) == wanted
    )
    if fits and (row.valid or not leaf):
        return "attached" if row.attached else "built"
    index = table.qualify(name)
    if leaf and not row.attached:
        operations.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    else:
        operations.execute(locked_ddl(change.table, "index", [f"DROP INDEX IF EXISTS {index}"]))
    return "missing"


def _index_params(
    change: OnlineChange, table: TableRef, name: str, parent_index: str | None = None
) -> dict[str, str | None]:
    """``column``: the column the staging index is on, None for a prefix expression."""
    return {
        "table": table.sql,
        "column": change.indexed_column,
        "index": table.qualify(name),
        "parent_index": parent_index,
    }


def _on_only_sql(change: OnlineChange, table: TableRef, name: str) -> str:
    return f"CREATE INDEX IF NOT EXISTS {ident(name)} ON ONLY {table.sql} {change.index_definition}"
