"""Searching tables sharded by Citus: the distributed form of the search statement, and how its
settings reach the shards.

Citus plans a subquery with ``ORDER BY ... LIMIT`` over a distributed table recursively: each
shard runs it with the same ``LIMIT`` and returns its rows, the coordinator merges them by the
same ordering, keeps the ``LIMIT`` first into an intermediate result and runs the rest of the
statement on that. The single-node statement (:mod:`mrl_pg.search.statement`) does not fit
that: Citus refuses its ``LATERAL`` first stage gated on the settings subquery, and a first
stage that carries the full vectors would have every shard send every candidate's vector. The
distributed form is::

    SELECT <entities>, c.mrl_distance AS distance
    FROM (SELECT <entity columns>, <full vector> <=> :q AS mrl_distance
          FROM ... WHERE <app filters>
          ORDER BY <prefix> <=> <prefix of :q> LIMIT <candidates>) AS c
    ORDER BY distance LIMIT <k>

Each shard walks its own HNSW index on the prefix, computes the exact distance of its
candidates and sends them with the columns the entities load (not the full vectors, unless the
search selects them); the coordinator keeps the ``candidates`` nearest by prefix among them,
as one node would, and orders those by the shipped exact distance. Later stages of a funnel
rank by prefix distances the shards computed too. A filter on the distribution column routes
the whole statement to the one shard that holds the rows.

Settings: ``set_config`` in a statement changes the coordinator only. A ``SET LOCAL`` reaches
the shards when ``citus.propagate_set_commands`` is ``local`` (Citus sends it to the worker
connections of the transaction). So before the statement a ``DO`` block keeps the current
values (in the placeholders of :func:`~mrl_pg.search.hnsw_settings.kept_as`, like the
single-node statement), then sets every managed setting with a propagated ``SET LOCAL``: the
search's own values, the kept ones for those it leaves alone. Inside a transaction the next
statement that is not a search puts the kept values back the same way; on an autocommit
connection the search runs in a transaction of its own (``BEGIN`` with the settings, ``COMMIT``
after the rows are read). That is one or two round trips more than on one node, small beside
the work of a statement that runs on every shard.

Whether a connection's database runs Citus (has the ``citus`` extension) is asked once per
connection; ``mrl_search(..., distributed=True or False)`` chooses the form without asking.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, inspect
from sqlalchemy import select as sql_select
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.sql.selectable import NamedFromClause

from mrl_pg.errors import SearchParameterError
from mrl_pg.prefix.declare import Prefix
from mrl_pg.search.hnsw_settings import (
    Settings,
    _run,
    in_transaction_block,
    kept_as,
    present_settings,
    restore_before_next_statement,
)
from mrl_pg.sqltext import literal

if TYPE_CHECKING:
    from mrl_pg.search.search_select import SearchSelect

#: The column of a distributed first stage that carries the exact full-vector distance.
DISTANCE_COLUMN = "mrl_distance"
_CITUS_KEY = "mrl_pg_citus"
_PROPAGATE = "citus.propagate_set_commands"


@dataclass(frozen=True)
class DistributedForm:
    """How a single-node search becomes its distributed form: ``build`` makes the distributed
    statement of ``built`` (the search as ``mrl_search`` made it, before values were bound),
    with the same bound parameters."""

    built: SearchSelect
    build: Callable[[], SearchSelect]

    def statement_for(self, search: SearchSelect) -> SearchSelect:
        """The distributed statement to run in place of ``search``, which must be ``built``
        or a copy of it with other values (``.params()``, ``.execution_options()``)."""
        key, built_key = search._generate_cache_key(), self.built._generate_cache_key()
        if key is not None and built_key is not None and key.key != built_key.key:
            raise SearchParameterError(
                "this search was changed after mrl_search() built it (.where(), .limit(),"
                " .options(), ...), and the connection runs Citus, where a search runs in its"
                " distributed form, which does not carry such changes: build it with"
                " mrl_search(..., distributed=True) and change that statement, or put the"
                " filters in the select() given to mrl_search"
            )
        return self.build()


def distributed_stages(
    base: Select[Any],
    stages: list[Prefix],
    row_counts: Sequence[ColumnElement[int]],
    query_vector: ColumnElement[Any],
) -> tuple[NamedFromClause, ColumnElement[float]]:
    """The candidates subquery of the last stage of a distributed search over ``base``, and its
    exact-distance column. ``row_counts`` are the stages' ``LIMIT`` values."""
    first = stages[0]
    computed_on_shards = [
        first.spec.full_distance(first.full_column, query_vector).label(DISTANCE_COLUMN),
        *(
            stage.spec.index_distance(stage.value, stage.spec.expression(query_vector)).label(
                f"mrl_stage_{i}"
            )
            for i, stage in enumerate(stages[1:], start=1)
        ),
    ]
    inner = (
        shipped_columns(base)
        .add_columns(*computed_on_shards)
        .order_by(first.spec.index_distance(first.value, first.spec.expression(query_vector)))
        .limit(row_counts[0])
    )
    candidates: NamedFromClause = inner.subquery("mrl_candidates_0")
    for i in range(1, len(stages)):
        narrowed = sql_select(candidates).order_by(candidates.c[f"mrl_stage_{i}"])
        candidates = narrowed.limit(row_counts[i]).subquery(f"mrl_candidates_{i}")
    return candidates, candidates.c[DISTANCE_COLUMN]


def shipped_columns(base: Select[Any]) -> Select[Any]:
    """``base`` selecting only what its result needs: the columns an entity loads (deferred
    ones, such as prefixes and usually the full vector, stay on the shards), and the columns
    it names. Citus sends every column of a first stage from every shard."""
    columns: list[Any] = []
    for description in base.column_descriptions:
        entity, expression = description.get("entity"), description.get("expr")
        if entity is not None and expression is entity:
            mapper = inspect(entity).mapper
            columns += [
                getattr(entity, prop.key) for prop in mapper.column_attrs if not prop.deferred
            ]
        else:
            columns.append(expression)
    return base.with_only_columns(*columns, maintain_column_froms=True)


def runs_on_citus(conn: Connection) -> bool:
    """Whether ``conn``'s database has the ``citus`` extension, asked once per DBAPI
    connection."""
    known: bool | None = conn.info.get(_CITUS_KEY)
    if known is None:
        rows = _run(conn, "SELECT 1 FROM pg_extension WHERE extname = 'citus'")
        known = conn.info[_CITUS_KEY] = bool(rows)
    return known


def execute_distributed(
    search: SearchSelect,
    connection: Connection,
    distilled_params: list[Mapping[str, Any]],
    execution_options: Mapping[str, Any],
    streams: bool,
) -> CursorResult[Any]:
    """Run ``search`` in its distributed form, its settings made with propagated
    ``SET LOCAL`` first (see the module's notes)."""
    statement, values = search, {}
    if not search.distributed:
        assert search.distributed_form is not None
        statement = search.distributed_form.statement_for(search)
        values = dict(search.bound_values or {})
    params = [{**values, **given} for given in distilled_params] or [values]
    own_transaction = not in_transaction_block(connection)
    if own_transaction and streams:
        raise SearchParameterError(
            "a search streamed on an autocommit connection cannot make its settings on the"
            " Citus shards, which last only for a transaction: run it inside a transaction"
        )
    settings_sql = set_local_sql(
        search.search_settings, present_settings(connection, search.search_settings)
    )
    _run(connection, f"BEGIN; {settings_sql}" if own_transaction else settings_sql)
    try:
        result = Select._execute_on_connection(statement, connection, params, execution_options)
    except BaseException:
        if own_transaction:
            _run(connection, "ROLLBACK")
        raise
    if own_transaction:
        _run(connection, "COMMIT")
    elif not streams:
        restore_before_next_statement(connection, restore_set_local)
    return result


def set_local_sql(settings: Settings, names: Sequence[str]) -> str:
    """A ``DO`` block that keeps the current values of ``names`` (once per transaction) and
    sets them with propagated ``SET LOCAL``: to ``settings``' values, or back to the kept ones.
    The values are mrl_pg's own checked numbers and modes, written as literals (a ``DO`` block
    takes no parameters)."""
    wanted = dict(settings)
    rows = [(name, kept_as(name), wanted.get(name, "")) for name in names]
    return _do_block(
        rows,
        "PERFORM set_config(s.kept, coalesce(nullif(current_setting(s.kept, true), ''), "
        "current_setting(s.name)), true);\n"
        "        EXECUTE format('SET LOCAL %s TO %L', s.name, "
        "coalesce(nullif(s.value, ''), current_setting(s.kept)));",
    )


def restore_set_local(conn: Connection) -> None:
    """Put the values a distributed search kept back, on the coordinator and the shards."""
    names = present_settings(conn, ())
    rows = [(name, kept_as(name), "") for name in names]
    _run(
        conn,
        _do_block(
            rows,
            "EXECUTE format('SET LOCAL %s TO %L', s.name, "
            "coalesce(nullif(current_setting(s.kept, true), ''), current_setting(s.name)));\n"
            "        PERFORM set_config(s.kept, '', true);",
        ),
    )


def _do_block(rows: Sequence[tuple[str, str, str]], body: str) -> str:
    """A ``DO`` block running ``body`` for each ``(name, kept, value)`` row with
    ``citus.propagate_set_commands`` set to ``local``, then back to what it was."""
    values = ", ".join(f"({', '.join(literal(part) for part in row)})" for row in rows)
    return (
        "DO $mrl_pg$\n"
        "DECLARE\n"
        "    s record;\n"
        f"    propagate text := current_setting({literal(_PROPAGATE)}, true);\n"
        "BEGIN\n"
        f"    PERFORM set_config({literal(_PROPAGATE)}, 'local', true);\n"
        f"    FOR s IN SELECT * FROM (VALUES {values}) AS v (name, kept, value) LOOP\n"
        f"        {body}\n"
        "    END LOOP;\n"
        f"    PERFORM set_config({literal(_PROPAGATE)}, coalesce(propagate, 'none'), true);\n"
        "END\n"
        "$mrl_pg$"
    )
