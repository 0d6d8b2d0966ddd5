"""Autogenerate support: prefix changes become mrl_pg operations, never ``alter_column``.

Alembic alone sees a changed prefix as ``alter_column(type_=...)``, which PostgreSQL rejects
for a generated column, and a new one as a plain ``add_column``/``create_index`` pair. After
Alembic's own comparison, this pass compares each table's declared prefixes with the ones in
the database, removes Alembic's column and index operations for them, and puts
``op.add_mrl_prefix`` / ``op.resize_mrl_prefix`` / ``op.drop_mrl_prefix`` in their place.
``context.configure(..., mrl_pg_online=...)`` in ``env.py`` makes them online operations for
every table (True) or for the tables a function of the ``Table`` picks.

Alembic also takes each partition of a partitioned table for a table the models lack, and
would drop it; the partitions of tables that declare a prefix are left alone.

The pass is enabled in two ways, both on PostgreSQL only (qualifier ``"postgresql"``):
``import mrl_pg.alembic`` in ``env.py`` calls :func:`register`, which adds it to Alembic's
global comparators, for every environment of the process; the Alembic plugin ``mrl_pg``
(:mod:`mrl_pg.alembic_plugin`) adds it to the environments that name it in
``autogenerate_plugins``. Where both apply, the global registration steps aside for the
plugin's, so each comparison runs once and each operation is emitted once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from alembic.autogenerate import comparators, renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import Column, Connection, Table, text

from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.change import DEFAULT_BATCH_SIZE, staging_column, staging_index
from mrl_pg.alembic.ops import AddMRLPrefixOp, DropMRLPrefixOp, ResizeMRLPrefixOp
from mrl_pg.alembic.reflect import reflect_prefixes, table_exists
from mrl_pg.alembic.render import use_pgvector_rendering
from mrl_pg.alembic_plugin import DIALECT_NAME, ENABLED_TARGET
from mrl_pg.prefix.declare import INFO_KEY, Prefix, prefixes_of
from mrl_pg.sqltext import TableRef

_IMPORT = "from mrl_pg.alembic import MRLPrefix"
logger = logging.getLogger("alembic.mrl_pg")

_PARTITION_ROOT_SQL = text(
    """
    SELECT r.relname AS name, n.nspname AS schema, n.nspname = current_schema() AS in_default
    FROM pg_class c
    JOIN pg_class r ON r.oid = pg_partition_root(c.oid)
    JOIN pg_namespace n ON n.oid = r.relnamespace
    WHERE c.oid = to_regclass(:table) AND c.relispartition
    """
)


def compare_prefixes(
    autogen_context: AutogenContext, upgrade_ops: ops.UpgradeOps
) -> PriorityDispatchResult:
    """Replace Alembic's operations on each table's prefixes by mrl_pg's."""
    connection = autogen_context.connection
    if connection is None:
        return PriorityDispatchResult.CONTINUE
    created = {
        (op.schema, op.table_name) for op in upgrade_ops.ops if isinstance(op, ops.CreateTableOp)
    }
    _keep_partitions(connection, upgrade_ops, autogen_context.sorted_tables)
    for table in autogen_context.sorted_tables:
        key = (table.schema, table.name)
        if key in created or not _included(autogen_context, table):
            continue
        if not table_exists(connection, table.name, table.schema):
            continue
        changes = _table_changes(
            autogen_context, table, reflect_prefixes(connection, table.name, table.schema)
        )
        if changes is not None:
            _replace_in(upgrade_ops, table, *changes)
    return PriorityDispatchResult.CONTINUE


def skip_prefix_server_default(
    autogen_context: AutogenContext,
    alter_column_op: ops.AlterColumnOp,
    schema: str | None,
    table_name: str,
    column_name: str,
    conn_column: Column[Any],
    metadata_column: Column[Any],
) -> PriorityDispatchResult:
    """Leave a declared prefix's generation expression to :func:`compare_prefixes`: Alembic's
    own comparison would warn that a computed default "cannot be modified", and would take a
    trigger-maintained prefix for a changed one."""
    if INFO_KEY in metadata_column.info:
        return PriorityDispatchResult.STOP
    return PriorityDispatchResult.CONTINUE


def _keep_partitions(
    connection: Connection, upgrade_ops: ops.UpgradeOps, tables: Sequence[Table]
) -> None:
    """Take out what Alembic would do to the partitions of a table with a prefix: drop
    their indexes, then them."""
    with_prefixes = {
        (table.schema, table.name) for table in tables if prefixes_of(table)
    }
    for op in list(upgrade_ops.ops):
        if not isinstance(op, (ops.DropTableOp, ops.ModifyTableOps)):
            continue
        root = connection.execute(
            _PARTITION_ROOT_SQL, {"table": TableRef(op.table_name, op.schema).sql}
        ).first()
        if root is None:
            continue
        keys = {(root.schema, root.name)} | ({(None, root.name)} if root.in_default else set())
        if keys & with_prefixes:
            upgrade_ops.ops.remove(op)
            if isinstance(op, ops.DropTableOp):
                logger.info("left partition %r of table %r alone", op.table_name, root.name)


def _included(autogen_context: AutogenContext, table: Table) -> bool:
    return bool(
        autogen_context.run_name_filters(table.name, "table", {"schema_name": table.schema})
        and autogen_context.run_object_filters(table, table.name, "table", False, None)
    )


def _online(autogen_context: AutogenContext, table: Table) -> bool:
    """Whether to write online operations for ``table``: the ``mrl_pg_online`` option of
    ``context.configure()`` in ``env.py``, True, False (the default), or a function of the
    ``Table``."""
    choice = autogen_context.opts.get("mrl_pg_online", False)
    return bool(choice(table) if callable(choice) else choice)


def _table_changes(
    autogen_context: AutogenContext, table: Table, in_database: dict[str, MRLPrefix]
) -> tuple[list[ops.MigrateOperation], set[str], set[str]] | None:
    """The mrl ops for ``table``, and the column and index names whose Alembic ops they
    replace; None when the table's prefixes are all as declared."""
    declared = {
        prefix.name: (prefix, MRLPrefix.from_declared(prefix)) for prefix in prefixes_of(table)
    }
    in_database = _named_as_declared(in_database, declared.values(), table.name)
    options = {"schema": table.schema, "online": _online(autogen_context, table)}
    new_ops: list[ops.MigrateOperation] = []
    columns: set[str] = set()
    indexes: set[str] = set()
    for name in [*declared, *(n for n in in_database if n not in declared)]:
        model_side = declared.get(name)
        db_side = in_database.get(name)
        if model_side is not None:
            if not _included_prefix(autogen_context, model_side[0]):
                continue
        elif (
            not autogen_context.run_name_filters(
                name, "column", {"table_name": table.name, "schema_name": table.schema}
            )
            or name in table.c
        ):
            continue
        columns.add(name)
        for side in (model_side[1] if model_side else None, db_side):
            if side is not None:
                indexes.add(side.index(table.name))
        if model_side is None and db_side is not None:
            new_ops.append(DropMRLPrefixOp(table.name, db_side, **options))
        elif model_side is not None and db_side is None:
            new_ops.append(AddMRLPrefixOp(table.name, model_side[1], **options))
        elif (
            model_side is not None
            and db_side is not None
            and (model_side[1].ddl_signature(table.name) != db_side.ddl_signature(table.name))
        ):
            new_ops.append(ResizeMRLPrefixOp(table.name, db_side, model_side[1], **options))
    if not columns:
        return None
    for name in [*declared, *in_database]:  # an unfinished online change's leftovers
        columns.add(staging_column(name))
        for prefix in (declared.get(name, (None, None))[1], in_database.get(name)):
            if prefix is not None:
                indexes.add(staging_index(table.name, prefix))
    return new_ops, columns, indexes


def _named_as_declared(
    in_database: dict[str, MRLPrefix],
    declared: Iterable[tuple[Prefix, MRLPrefix]],
    table_name: str,
) -> dict[str, MRLPrefix]:
    """The database's prefixes, each index-only one named as the declared prefix with the
    same index, if there is one: the catalog knows an index-only prefix by its index, and
    only an index named ``ix_<table>_<name>_hnsw`` tells its name."""
    by_index = {
        migration.index(table_name): migration.column
        for _, migration in declared
    }
    renamed: dict[str, MRLPrefix] = {}
    for name, prefix in in_database.items():
        declared_name = by_index.get(prefix.index(table_name), name)
        if not prefix.stored and declared_name != name:
            prefix = replace(prefix, column=declared_name)
        renamed[prefix.column] = prefix
    return renamed


def _included_prefix(autogen_context: AutogenContext, prefix: Prefix) -> bool:
    """Whether ``env.py``'s ``include_object`` keeps a declared prefix: its column, or an
    index-only prefix's index."""
    if prefix.column is not None:
        return bool(
            autogen_context.run_object_filters(prefix.column, prefix.name, "column", False, None)
        )
    index = next((ix for ix in prefix.table.indexes if ix.name == prefix.index_name), None)
    return index is None or bool(
        autogen_context.run_object_filters(index, prefix.index_name, "index", False, None)
    )


def _replace_in(
    upgrade_ops: ops.UpgradeOps,
    table: Table,
    new_ops: list[ops.MigrateOperation],
    columns: set[str],
    indexes: set[str],
) -> None:
    modify = next(
        (
            op
            for op in upgrade_ops.ops
            if isinstance(op, ops.ModifyTableOps)
            and (op.schema, op.table_name) == (table.schema, table.name)
        ),
        None,
    )
    if modify is None:
        if not new_ops:
            return
        modify = ops.ModifyTableOps(table.name, [], schema=table.schema)
        upgrade_ops.ops.append(modify)
    modify.ops = [op for op in modify.ops if not _replaced(op, columns, indexes)] + new_ops
    if modify.is_empty():
        upgrade_ops.ops.remove(modify)


def _replaced(op: ops.MigrateOperation, columns: set[str], indexes: set[str]) -> bool:
    """Whether ``op`` is one of Alembic's ops on these prefixes."""
    if isinstance(op, ops.AddColumnOp):
        return op.to_column().name in columns
    if isinstance(op, (ops.DropColumnOp, ops.AlterColumnOp)):
        return op.column_name in columns
    if isinstance(op, (ops.CreateIndexOp, ops.DropIndexOp)):
        return op.index_name in indexes
    return False


def _render(
    autogen_context: AutogenContext,
    name: str,
    op: AddMRLPrefixOp | DropMRLPrefixOp | ResizeMRLPrefixOp,
    *prefixes: MRLPrefix,
) -> str:
    autogen_context.imports.add(_IMPORT)
    args = [repr(op.table_name), *(repr(p) for p in prefixes)]
    if op.schema is not None:
        args.append(f"schema={op.schema!r}")
    if op.online:
        args.append("online=True")
    if op.batch_size != DEFAULT_BATCH_SIZE:
        args.append(f"batch_size={op.batch_size!r}")
    return f"op.{name}({', '.join(args)})"


def _render_add(autogen_context: AutogenContext, op: AddMRLPrefixOp) -> str:
    return _render(autogen_context, "add_mrl_prefix", op, op.prefix)


def _render_drop(autogen_context: AutogenContext, op: DropMRLPrefixOp) -> str:
    return _render(autogen_context, "drop_mrl_prefix", op, op.prefix)


def _render_resize(autogen_context: AutogenContext, op: ResizeMRLPrefixOp) -> str:
    return _render(autogen_context, "resize_mrl_prefix", op, op.old, op.new)


_Comparator = Callable[..., PriorityDispatchResult]


def register() -> None:
    """Enable the autogenerate pass in every migration environment of the process, and
    register the renderers of mrl_pg's operations. :mod:`mrl_pg.alembic` calls it once, when
    it is imported; call it no more."""
    comparators.dispatch_for(
        "autogenerate", qualifier=DIALECT_NAME, priority=DispatchPriority.LAST
    )(_unless_plugin_enabled(compare_prefixes))
    comparators.dispatch_for(
        "autogenerate", qualifier=DIALECT_NAME, priority=DispatchPriority.FIRST
    )(_unless_plugin_enabled(use_pgvector_rendering))
    comparators.dispatch_for(
        "column",
        subgroup="server_default",
        qualifier=DIALECT_NAME,
        priority=DispatchPriority.FIRST,
    )(_unless_plugin_enabled(skip_prefix_server_default))
    renderers.dispatch_for(AddMRLPrefixOp)(_render_add)
    renderers.dispatch_for(DropMRLPrefixOp)(_render_drop)
    renderers.dispatch_for(ResizeMRLPrefixOp)(_render_resize)


def _unless_plugin_enabled(comparator: _Comparator) -> _Comparator:
    """``comparator``, as a no-op in the environments where the plugin ``mrl_pg`` registers
    it too."""

    def run(autogen_context: AutogenContext, *args: Any) -> PriorityDispatchResult:
        if _plugin_enabled(autogen_context):
            return PriorityDispatchResult.CONTINUE
        return comparator(autogen_context, *args)

    return run


def _plugin_enabled(autogen_context: AutogenContext) -> bool:
    """Whether the environment's ``autogenerate_plugins`` include the plugin ``mrl_pg``: then
    its comparators answer :data:`~mrl_pg.alembic_plugin.ENABLED_TARGET`."""
    answers: list[bool] = []
    autogen_context.comparators.dispatch(ENABLED_TARGET, qualifier=DIALECT_NAME)(answers)
    return bool(answers)
