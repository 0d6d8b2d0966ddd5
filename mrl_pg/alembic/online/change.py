"""Online prefix changes: no table rewrite, no long exclusive lock.

``op.add_mrl_prefix(..., online=True)`` and ``op.resize_mrl_prefix(..., online=True)`` build
the new prefix beside the table's current one and swap it in:

1. **prepare**: add a plain staging column and the trigger that fills it on every insert and
   update (metadata only; a short lock);
2. **backfill**: fill the staging column of the existing rows, a batch of table blocks per
   transaction (at most ``batch_size`` rows, and about ``BATCH_SECONDS`` long), with progress
   notices (``mrl_pg: backfill ...``);
3. **index**: ``CREATE INDEX CONCURRENTLY`` on the staging column (on each partition of a
   partitioned table, see :mod:`mrl_pg.alembic.online.index_step`);
4. **swap**: in one short transaction, drop the old prefix and its index, rename the staging
   column and index to their final names and hand over the trigger.

Until the swap, the old prefix and its index serve searches as before. Each step can run
again: after an interruption, rerunning the migration carries on where it stopped, and
:func:`abandon_sql` (``mrl-pg abandon-online``) removes what an unfinished change left.
Steps that need a lock take it with a short ``lock_timeout`` and retry, so a long-running
query delays the change instead of queueing every other query behind it.

The prefix that results is a plain column kept current by a trigger (see
:mod:`mrl_pg.alembic.online.trigger`); searches, reflection and autogenerate treat it like a
generated one. Needs PostgreSQL 14 or later (TID range scans, ``CREATE OR REPLACE TRIGGER``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.trigger import (
    create_trigger_sql,
    drop_trigger_sql,
    expression_sql,
    function_sql,
    trigger_body,
)
from mrl_pg.prefix.names import default_index_name, fit_identifier
from mrl_pg.sqltext import DIALECT, TableRef, ident, literal

#: Most rows filled per backfill transaction, by default. A batch holds its rows' locks until
#: it commits, so an application's update of one of them waits for up to one batch...
DEFAULT_BATCH_SIZE = 500
#: ...which is why batches also shrink, or grow back, to take about this many seconds.
BATCH_SECONDS = 0.2
#: How long a step waits for a lock before it lets other queries through and retries.
LOCK_TIMEOUT_MS = 2_000
LOCK_ATTEMPTS = 30


#: How the names of staging columns end; no prefix column of mrl_pg's ends so.
STAGING_SUFFIX = "_mrl_next"
#: How the names of staging indexes end.
STAGING_INDEX_SUFFIX = "_next"


def staging_column(column: str) -> str:
    """The column a new prefix is built in before it takes ``column``'s name."""
    return fit_identifier(column, STAGING_SUFFIX)


def staging_index(table_name: str, prefix: MRLPrefix) -> str:
    """The index a new prefix is built with before it takes its final name."""
    return fit_identifier(prefix.index(table_name), STAGING_INDEX_SUFFIX)


@dataclass(frozen=True)
class OnlineChange:
    """Build prefix ``new`` on ``table`` (beside ``old``, when resizing) and swap it in."""

    table: TableRef
    new: MRLPrefix
    old: MRLPrefix | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    @property
    def keeps_column(self) -> bool:
        """Whether a stored prefix's column stays as it is and only its index changes (HNSW
        parameters, or a distance of the same expression): then the new index is built on
        the current column."""
        return (
            self.old is not None
            and self.new.stored
            and self.old.column_signature() == self.new.column_signature()
        )

    @property
    def builds_column(self) -> bool:
        """Whether the change fills a staging column (prepare and backfill): the new prefix
        is stored and its column is not the current one. An index-only prefix never writes
        a row."""
        return self.new.stored and not self.keeps_column

    @property
    def swaps_without_table_lock(self) -> bool:
        """Whether the swap only drops and renames indexes (index-only prefixes, old and
        new), which needs no lock that writers or readers wait for."""
        return not self.new.stored and (self.old is None or not self.old.stored)

    @property
    def staging_column(self) -> str:
        return staging_column(self.new.column)

    @property
    def indexed_column(self) -> str | None:
        """The column the staging index is built on; None when it is built on the prefix
        expression (an index-only prefix)."""
        if not self.new.stored:
            return None
        return self.new.column if self.keeps_column else self.staging_column

    @property
    def staging_index(self) -> str:
        return staging_index(self.table.name, self.new)

    @property
    def staging_type(self) -> str:
        """The staging column's type as ``format_type`` spells it, e.g. ``halfvec(256)``."""
        return str(self.new.spec().sql_type().compile(dialect=DIALECT)).lower()

    def prepare_sql(self) -> str:
        """Add the staging column and its trigger; start over if a different change left one."""
        table, staging = self.table, self.staging_column
        stale = (
            f"EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = {table.regclass} "
            f"AND attname = {literal(staging)} AND NOT attisdropped AND ("
            f"format_type(atttypid, atttypmod) <> {literal(self.staging_type)} "
            f"OR (SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure("
            f"{literal(function_sql(table, staging) + '()')})) "
            f"IS DISTINCT FROM {literal(trigger_body(self.new, staging))}))"
        )
        return locked_ddl(
            table,
            "prepare",
            [
                f"IF {stale} THEN\n"
                + "".join(f"    {statement};\n" for statement in abandon_statements(table, staging))
                + "END IF",
                f"ALTER TABLE {table.sql} ADD COLUMN IF NOT EXISTS {ident(staging)} "
                f"{self.staging_type}",
                *create_trigger_sql(table, self.new, staging),
            ],
        )

    def backfill_sql(self) -> str:
        """Fill the staging column of every row that predates the trigger, committing each
        batch; the leaf partitions of a partitioned table one after the other."""
        table, staging = self.table, ident(self.staging_column)
        full = ident(self.new.full_column)
        expression = expression_sql(self.new, full)
        update_template = "UPDATE %s " + (
            f"SET {staging} = {expression} WHERE ctid >= $1 AND ctid < $2 "
            f"AND {staging} IS NULL AND {full} IS NOT NULL"
        ).replace("%", "%%")
        batch = self.batch_size
        return f"""DO $mrl$
DECLARE
    part regclass;
    blocks bigint;
    max_step bigint;
    step bigint;
    low bigint;
    done bigint;
    total bigint := 0;
    started timestamptz;
    took double precision;
BEGIN
    FOR part IN
        SELECT relid FROM pg_partition_tree({table.regclass}) WHERE isleaf
        UNION ALL
        SELECT {table.regclass} WHERE NOT EXISTS (SELECT FROM pg_partition_tree({table.regclass}))
    LOOP
        blocks := pg_relation_size(part) / current_setting('block_size')::bigint;
        SELECT greatest(1, ceil({batch} / CASE WHEN relpages > 0 AND reltuples > 0
                   THEN greatest(1.0, reltuples / relpages) ELSE 1.0 END))::bigint
            INTO max_step FROM pg_class WHERE oid = part;
        step := max_step;
        low := 0;
        WHILE low < blocks LOOP
            started := clock_timestamp();
            EXECUTE format({literal(update_template)}, part)
                USING format('(%s,0)', low)::tid, format('(%s,0)', low + step)::tid;
            GET DIAGNOSTICS done = ROW_COUNT;
            COMMIT;
            took := extract(epoch FROM clock_timestamp() - started);
            total := total + done;
            low := low + step;
            step := greatest(1, least(max_step,
                round(step * {BATCH_SECONDS} / greatest(took, 0.001))));
            RAISE NOTICE 'mrl_pg: backfill of %: % rows filled, block % of % of %',
                {literal(table.sql)}, total, least(low, blocks), blocks, part;
        END LOOP;
    END LOOP;
    LOOP
        UPDATE {table.sql} SET {staging} = {expression}
        WHERE {staging} IS NULL AND {full} IS NOT NULL AND ctid = ANY(ARRAY(
            SELECT ctid FROM {table.sql} WHERE {staging} IS NULL AND {full} IS NOT NULL
            LIMIT {batch}));
        EXIT WHEN NOT FOUND;
        COMMIT;
    END LOOP;
END
$mrl$"""

    def drop_index_sql(self) -> str:
        return f"DROP INDEX CONCURRENTLY IF EXISTS {self.table.qualify(self.staging_index)}"

    def create_index_sql(self) -> str:
        return (
            f"CREATE INDEX CONCURRENTLY {ident(self.staging_index)} ON {self.table.sql} "
            + self.index_definition
        )

    @property
    def index_definition(self) -> str:
        """The staging index's method, column or expression, and parameters: ``USING hnsw
        (...) WITH (...)``."""
        spec = self.new.spec()
        column = self.indexed_column
        indexed = (
            ident(column)
            if column is not None
            else f"({expression_sql(self.new, ident(self.new.full_column))})"
        )
        return (
            f"USING hnsw ({indexed} {spec.opclass}) "
            f"WITH (m = {spec.m}, ef_construction = {spec.ef_construction})"
        )

    def swap_sql(self, renames: Sequence[str] = ()) -> str:
        """Retire the old prefix and give the staging column and index their final names;
        ``renames`` name the indexes of a partitioned table's partitions."""
        table, new = self.table, self.new
        statements = [self._staging_index_complete_sql()]
        if self.old is not None:
            statements.append(f"DROP INDEX IF EXISTS {table.qualify(self.old.index(table.name))}")
        if self.old is not None and self.old.stored and not self.keeps_column:
            statements += [
                *drop_trigger_sql(table, self.old.column),
                f"ALTER TABLE {table.sql} DROP COLUMN IF EXISTS {ident(self.old.column)}",
            ]
        if self.builds_column:
            statements += [
                *drop_trigger_sql(table, self.staging_column),
                f"ALTER TABLE {table.sql} RENAME COLUMN {ident(self.staging_column)} "
                f"TO {ident(new.column)}",
                *create_trigger_sql(table, new, new.column),
            ]
        statements += [
            f"ALTER INDEX {table.qualify(self.staging_index)} "
            f"RENAME TO {ident(new.index(table.name))}",
            *renames,
        ]
        return locked_ddl(table, "swap", statements)

    def index_swap_sql(self) -> list[str]:
        """The swap of an index-only change, statements to run one by one outside a
        transaction: check that the staging index is complete, drop the old index
        concurrently, then give the staging index its final name. Renaming an index takes a
        lock that neither readers nor writers wait for; searches by the new prefix use the
        staging index whatever its name, as soon as it is complete."""
        table = self.table
        statements = [f"DO $mrl$\nBEGIN\n    {self._staging_index_complete_sql()};\nEND\n$mrl$"]
        if self.old is not None:
            statements.append(
                f"DROP INDEX CONCURRENTLY IF EXISTS {table.qualify(self.old.index(table.name))}"
            )
        rename = (
            f"ALTER INDEX {table.qualify(self.staging_index)} "
            f"RENAME TO {ident(self.new.index(table.name))}"
        )
        statements.append(locked_ddl(table, "swap", [rename], lock_table=False))
        return statements

    def _staging_index_complete_sql(self) -> str:
        staging_index = literal(self.table.qualify(self.staging_index))
        return (
            f"IF NOT coalesce((SELECT indisvalid FROM pg_index "
            f"WHERE indexrelid = to_regclass({staging_index})), false) THEN "
            f"RAISE EXCEPTION 'mrl_pg: swap: index % is incomplete; run the migration "
            f"again', {staging_index} USING ERRCODE = 'object_not_in_prerequisite_state'; "
            "END IF"
        )


def abandon_statements(table: TableRef, staging: str) -> list[str]:
    """Drop a staging column (with its index) and its trigger."""
    return [
        *drop_trigger_sql(table, staging),
        f"ALTER TABLE {table.sql} DROP COLUMN IF EXISTS {ident(staging)}",
    ]


def abandon_sql(table: TableRef, column: str) -> str:
    """Remove what an unfinished online change of prefix ``column`` left on ``table``: a
    staging column with its index and trigger, staging indexes (``..._next``) on the column
    itself, or those of an index-only prefix named ``column`` (with its default index name).
    The table's current prefix stays as it is."""
    expression_staging = fit_identifier(
        default_index_name(table.name, column), STAGING_INDEX_SUFFIX
    )
    staging_indexes = (
        "SELECT x.indexrelid::regclass FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_class t ON t.oid = x.indrelid "
        "LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] "
        f"WHERE (x.indrelid = {table.regclass} OR x.indrelid IN "
        f"(SELECT relid FROM pg_partition_tree({table.regclass}))) "
        f"AND i.relname LIKE '%\\_next' AND (a.attname = {literal(column)} "
        f"OR x.indkey[0] = 0 AND i.relname IN ({literal(expression_staging)}, "
        f"t.relname || '_' || {literal(column)} || '_idx_next')) "
        "AND NOT EXISTS (SELECT FROM pg_inherits h WHERE h.inhrelid = x.indexrelid)"
    )
    drop_staging_indexes = (
        f"DECLARE leftover regclass; BEGIN FOR leftover IN {staging_indexes} LOOP "
        "EXECUTE format('DROP INDEX %s', leftover); END LOOP; END"
    )
    return locked_ddl(
        table,
        "abandon",
        [*abandon_statements(table, staging_column(column)), drop_staging_indexes],
    )


def locked_ddl(
    table: TableRef, step: str, statements: list[str], *, lock_table: bool = True
) -> str:
    """A DO block running ``statements`` in one transaction, each attempt waiting at most
    ``LOCK_TIMEOUT_MS`` for its locks, up to ``LOCK_ATTEMPTS`` attempts.

    The block first locks the table, and with it every partition, parent before children as
    writers lock them, so that it never waits for a lock while holding another: the
    statements need no lock it does not hold already. ``lock_table=False`` leaves that out,
    for statements whose locks readers and writers do not wait for."""
    if lock_table:
        statements = [f"LOCK TABLE {table.sql} IN ACCESS EXCLUSIVE MODE", *statements]
    body = "".join(f"            {statement};\n" for statement in statements)
    return f"""DO $mrl$
BEGIN
    FOR attempt IN 1..{LOCK_ATTEMPTS} LOOP
        BEGIN
            PERFORM set_config('lock_timeout', '{LOCK_TIMEOUT_MS}ms', true);
{body}            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            RAISE NOTICE 'mrl_pg: %: % is busy, retrying (attempt % of {LOCK_ATTEMPTS})',
                {literal(step)}, {literal(table.sql)}, attempt;
            PERFORM pg_sleep(least(attempt, 10) * 0.1);
        END;
    END LOOP;
    RAISE EXCEPTION 'mrl_pg: %: could not lock % in {LOCK_ATTEMPTS} attempts',
        {literal(step)}, {literal(table.sql)} USING ERRCODE = 'lock_not_available';
END
$mrl$"""
