"""A search run straight on its psycopg cursor, where SQLAlchemy's execution would add nothing
to it but time.

On a fast search (a millisecond on the server) SQLAlchemy's per-execution work, an execution
context, parameter processing, a ``CursorResult`` and its metadata, costs as much again as the
statement's own Python: ``mrl_search`` on a Core connection reached 0.64x the q/s of the same
SQL sent with psycopg. A search made by :func:`~mrl_pg.search.statement.mrl_search` knows its
compiled SQL ahead (its template's, compiled once per dialect, the SQL SQLAlchemy would send)
and its values, so where nothing else could happen around the statement it is sent directly:
the values go through the same bind processors, the rows through the same result processors,
and the rows come back as a SQLAlchemy :class:`~sqlalchemy.engine.Result`
(:class:`SearchRows`: ``all()``, ``scalars()``, ``mappings()``, ``one()``, iteration,
``rowcount``).

It is taken only when all of these hold, and the search runs through SQLAlchemy otherwise:

- the driver is psycopg (sync, or async through SQLAlchemy's asyncio extension);
- nothing but mrl_pg itself (which puts settings back after a search in a transaction, and
  ignores searches) listens to the events that see a statement run (``before_execute``,
  ``after_execute``, ``before_cursor_execute``, ``after_cursor_execute``, and the dialect's
  ``do_execute`` family), and statement logging (``echo``) is off, so no instrumentation,
  logging or other listener misses it; listeners to other events (``connect``,
  ``engine_connect``, ``begin``, ``commit``, ``handle_error``, ...) fire as they always do;
- the statement is the one ``mrl_search`` returned, not a copy changed by ``.where()``,
  ``.params()``, ``.execution_options()`` and the like, executed without parameters of the
  call and without execution options other than those in :data:`HARMLESS_OPTIONS` (so an
  ORM ``Session``, whose options ask for ORM loading, runs it through SQLAlchemy).

What SQLAlchemy does for every statement is still done: the connection is checked out and
revalidated as usual, a transaction is begun (autobegin) if none is, and a driver error is
handled by SQLAlchemy (wrapped in :class:`sqlalchemy.exc.DBAPIError`, a lost connection
invalidated).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection, Dialect, IteratorResult
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.sql import Select

from mrl_pg.search.hnsw_settings import own_statement_listeners

#: Execution options that change nothing about how a search statement runs: the connection's
#: isolation level and read-only flags (applied when set, not per statement), log tokens, and
#: mrl_pg's own recall-monitor segment.
HARMLESS_OPTIONS = frozenset(
    {
        "isolation_level",
        "postgresql_readonly",
        "postgresql_deferrable",
        "logging_token",
        "mrl_pg_segment",
    }
)

Processor = Callable[[Any], Any]


@dataclass
class CompiledSearch:
    """A template's SQL for one dialect: the compiled statement and its text, each
    parameter's bind processor, and the result's keys, column types and their processors
    (found at the first execution: they depend on the types the server reports)."""

    compiled: Any
    sql: str
    bind_processors: dict[str, Processor]
    metadata: SimpleResultMetaData
    types: tuple[Any, ...]
    result_processors: dict[tuple[Any, ...], tuple[Processor | None, ...] | None] = field(
        default_factory=dict
    )


class DirectForms:
    """A search template's compiled forms, one per dialect (None: that dialect's SQL cannot
    be sent as it is, because parameters would be rendered into it at execution)."""

    def __init__(self, template: Select[Any]) -> None:
        self.template = template
        self._by_dialect: dict[Dialect, CompiledSearch | None] = {}

    def for_dialect(self, dialect: Dialect) -> CompiledSearch | None:
        try:
            return self._by_dialect[dialect]
        except KeyError:
            compiled = self._by_dialect[dialect] = _compile(self.template, dialect)
            return compiled


def _compile(template: Select[Any], dialect: Dialect) -> CompiledSearch | None:
    compiled: Any = template.compile(dialect=dialect)
    if compiled.positional or compiled.post_compile_params or compiled.literal_execute_params:
        return None
    # The keys and types a CursorResult takes from the compiled statement.
    keys = tuple(column.keyname for column in compiled._result_columns)
    if len(set(keys)) != len(keys):
        return None
    processors = {
        name: processor
        for name, processor in compiled._bind_processors.items()
        if processor is not None
    }
    return CompiledSearch(
        compiled=compiled,
        sql=compiled.string,
        bind_processors=processors,
        metadata=SimpleResultMetaData(keys),
        types=tuple(column.type for column in compiled._result_columns),
    )


class SearchRows(IteratorResult[Any]):
    """The rows of a search run directly: a SQLAlchemy ``Result`` (``all()``, ``scalars()``,
    ``mappings()``, ``one()``, iteration, ...) with a SELECT's ``CursorResult`` members,
    ``rowcount`` and ``returns_rows``."""

    returns_rows = True

    def __init__(self, metadata: SimpleResultMetaData, rows: list[Any]) -> None:
        super().__init__(metadata, iter(rows))
        self.rowcount = len(rows)


@dataclass(frozen=True)
class DirectRun:
    """What a search made by ``mrl_search`` needs to be sent directly: its template's compiled
    forms and the values it binds to them (by parameter key)."""

    forms: DirectForms
    values: Mapping[str, Any]

    def execute(
        self,
        connection: Connection,
        options: Sequence[Mapping[str, Any]],
        distilled_params: Any,
    ) -> SearchRows | None:
        """The search's rows, or None when it must run through SQLAlchemy instead."""
        if distilled_params or not _may_run_directly(connection, options):
            return None
        compiled = self.forms.for_dialect(connection.dialect)
        if compiled is None:
            return None
        if not connection.in_transaction():
            connection.begin()  # what SQLAlchemy's autobegin does before any statement
        params = compiled.compiled.construct_params(self.values)
        for name, process in compiled.bind_processors.items():
            params[name] = process(params[name])
        # psycopg's connection, or with asyncio SQLAlchemy's adaptation of it, whose cursor
        # offers the same calls and awaits the driver's.
        dbapi: Any = connection.connection.dbapi_connection
        try:
            cursor = dbapi.cursor()
            try:
                cursor.execute(compiled.sql, params)
                rows = cursor.fetchall()
                type_codes = _type_codes(cursor)
            finally:
                cursor.close()
        except BaseException as error:  # as SQLAlchemy: an interrupt invalidates too
            connection._handle_dbapi_exception(error, compiled.sql, params, None, None)
            raise  # not reached: SQLAlchemy raises its own wrapper
        processors = _result_processors(compiled, connection.dialect, type_codes)
        if processors is not None:
            rows = [
                tuple(v if p is None else p(v) for p, v in zip(processors, row, strict=True))
                for row in rows
            ]
        return SearchRows(compiled.metadata, rows)


#: The events that see a statement run: SQLAlchemy's around it, and the dialect's that may
#: take over its driver call. Other events (connect, begin, commit, errors, ...) fire alike
#: on both paths.
_STATEMENT_EVENTS = (
    "before_execute",
    "after_execute",
    "before_cursor_execute",
    "after_cursor_execute",
)
_DRIVER_EVENTS = ("do_execute", "do_execute_no_params", "do_executemany", "do_setinputsizes")


def _others_listen(connection: Connection) -> bool:
    """Whether a listener other than mrl_pg's own would see the statement: on the connection,
    its engine, or their classes, or on the dialect."""
    if connection._has_events or connection.engine._has_events:
        dispatch: Any = connection.dispatch
        listeners = sum(len(getattr(dispatch, name)) for name in _STATEMENT_EVENTS)
        if listeners != own_statement_listeners(connection.engine):
            return True
    dialect: Any = connection.dialect
    return bool(dialect._has_events) and any(
        len(getattr(dialect.dispatch, name)) for name in _DRIVER_EVENTS
    )


def _type_codes(cursor: Any) -> tuple[int, ...]:
    """The type OIDs of the result's columns; read from psycopg's result where there is one,
    which is cheaper than building ``cursor.description``."""
    result = getattr(cursor, "pgresult", None)
    if result is not None:
        return tuple(result.ftype(i) for i in range(result.nfields))
    return tuple(column[1] for column in cursor.description)


def _may_run_directly(connection: Connection, options: Sequence[Mapping[str, Any]]) -> bool:
    if connection.dialect.driver != "psycopg":
        return False
    if connection._echo or _others_listen(connection):
        return False
    if any(not HARMLESS_OPTIONS.issuperset(option_set) for option_set in options):
        return False
    # Where SQLAlchemy would refuse to run a statement, it runs it, to raise its own error:
    # a transaction that failed, or one that ended inside its own ``with`` block.
    transaction = connection.get_transaction()
    nested = connection.get_nested_transaction()
    if transaction is None:
        return not connection._trans_context_manager
    return transaction.is_active and (nested is None or nested.is_active)


def _result_processors(
    compiled: CompiledSearch, dialect: Dialect, type_codes: tuple[int, ...]
) -> tuple[Processor | None, ...] | None:
    """The result processors of the columns, for the type OIDs the server sent (cached by
    them); None when no column needs one."""
    try:
        return compiled.result_processors[type_codes]
    except KeyError:
        pass
    found = tuple(
        type_.dialect_impl(dialect).result_processor(dialect, type_code)
        for type_, type_code in zip(compiled.types, type_codes, strict=True)
    )
    processors = found if any(p is not None for p in found) else None
    compiled.result_processors[type_codes] = processors
    return processors
