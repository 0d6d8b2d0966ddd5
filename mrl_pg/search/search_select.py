"""The statement type of a search: a ``Select`` that prepares its connection, and arranges
for its pgvector settings to be put back, around its own execution, and nothing else's.

``SearchSelect`` is an ordinary ``Select`` (``.where``, ``.limit``, ``.options``,
``.execution_options``, ``.params`` and the other generative methods copy it, subclass and
settings included) that SQLAlchemy compiles and caches like any other. Its settings are part of
its SQL (see :mod:`mrl_pg.search.hnsw_settings`); its execution differs only in that it
prepares the connection for the binary query vector
(:func:`~mrl_pg.search.query_vector.prepare_connection`), binds other settings on a server
whose pgvector lacks some, and, inside a transaction, has the next statement that is not a
search put the settings back first. On a connection to Citus, a search runs in its distributed
form instead (:mod:`mrl_pg.search.citus`). A search made by ``mrl_search`` is sent straight to
the psycopg cursor where nothing else would see it run, and returns a SQLAlchemy ``Result``
of the same rows (:mod:`mrl_pg.search.direct`).

A search embedded in another statement (``search.subquery()`` in a ``select()``, say) runs as
part of that statement: its settings last to the end of the transaction, and with psycopg, on a
connection that has not run a search yet, its binary query vector cannot be sent. Make the
outer statement a search too::

    counted = SearchSelect(func.count(), settings=search.search_settings)
    conn.scalar(counted.select_from(search.subquery()))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Select
from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.sql.cache_key import CacheKey

from mrl_pg.search.citus import DistributedForm, execute_distributed, runs_on_citus
from mrl_pg.search.direct import DirectRun
from mrl_pg.search.hnsw_settings import (
    Settings,
    in_transaction_block,
    parameters_for,
    restore_before_next_statement,
    with_parameters,
)
from mrl_pg.search.query_vector import prepare_connection

if TYPE_CHECKING:
    from mrl_pg.search.statement import SearchRequest

#: Called after each search that ran on an engine, with the search, the connection, and the
#: parameters and execution options it was executed with; keyed by the engine's dialect,
#: which the engine, its ``execution_options()`` copies, the sync engine of an
#: ``AsyncEngine`` and the engine after ``dispose()`` share. The recall monitor
#: (:mod:`mrl_pg.monitor`) registers itself here; while no engine has one, a search pays one
#: test of an empty dictionary.
SEARCH_OBSERVERS: dict[Dialect, Callable[[SearchSelect, Connection, Any, Any], None]] = {}


class SearchSelect(Select[Any]):
    """A ``Select`` whose SQL makes ``search_settings`` (``(setting, value)`` pairs)."""

    inherit_cache = True  # every search of one shape shares a compile
    makes_own_settings = True
    search_settings: Settings = ()
    #: What :func:`~mrl_pg.search.statement.mrl_search` was asked; None for a search
    #: statement built otherwise.
    search_request: SearchRequest | None = None
    #: Whether this is the distributed form of a search (see :mod:`mrl_pg.search.citus`).
    distributed = False
    #: For a single-node search: how to build its distributed form, run in its place on a
    #: connection to Citus, and the values to bind to it. None: always runs as it is.
    distributed_form: DistributedForm | None = None
    bound_values: Mapping[str, Any] | None = None

    def __init__(self, *entities: Any, settings: Settings = (), distributed: bool = False) -> None:
        super().__init__(*entities)
        self.search_settings = settings
        self.distributed = distributed

    def share_cache_key(self, template_key: CacheKey) -> None:
        """Give this statement the cache key of the template it is a ``.params()`` copy of.

        SQLAlchemy keys its compiled-statement cache on a key it computes by walking the
        whole statement, at every execution of a new statement object: the largest Python
        cost of a search. A ``.params()`` copy has its template's structure and bound
        parameters, only other values (which the key carries apart, in ``params``), so the
        template's key, computed once, serves with this copy's values. It is set where
        SQLAlchemy memoizes the key itself (``_generate_cache_key``, listed in
        ``_memoized_keys``), so any further copy (``.where``, ``.limit``, ``.options``, a
        subquery's clone, ...) drops it and computes its own. tests/test_search_templates.py
        checks it equals the key SQLAlchemy computes. SQLAlchemy 2.0 keeps ``.params()``
        values in the key's bound parameters, so there the copy computes its own key.
        """
        if "params" not in CacheKey._fields:  # SQLAlchemy 2.0 keys values with the structure
            return
        params = self._params
        if template_key.params:
            params = template_key.params | params
        key = template_key._replace(params=params or None)
        self.__dict__["_generate_cache_key"] = lambda: key
        self._memoized_keys |= {"_generate_cache_key"}

    def run_directly_from(self, run: DirectRun) -> None:
        """Let this statement be sent straight to the driver where nothing else would happen
        around it (see :mod:`mrl_pg.search.direct`). Kept where SQLAlchemy memoizes, like
        :meth:`share_cache_key`, so that any copy of the statement, which may differ from
        the template, goes through SQLAlchemy."""
        self.__dict__[_DIRECT_RUN] = run
        self._memoized_keys |= {_DIRECT_RUN}

    def _execute_on_connection(
        self, connection: Connection, distilled_params: Any, execution_options: Any
    ) -> CursorResult[Any]:
        # A private SQLAlchemy hook (2.0, 2.1): Connection.execute/scalar/scalars, Session.execute
        # (ORM statements included) and the asyncio wrappers all run a statement by calling it.
        # tests/test_search_hooks.py fails if SQLAlchemy renames it or stops calling it.
        prepare_connection(connection)
        if self.distributed or (self.distributed_form is not None and runs_on_citus(connection)):
            streams = _streams(
                self.get_execution_options(), connection.get_execution_options(), execution_options
            )
            return execute_distributed(
                self, connection, distilled_params, execution_options, streams
            )
        replaced = parameters_for(connection, self.search_settings)
        direct: DirectRun | None = self.__dict__.get(_DIRECT_RUN)
        result: Any = None
        if direct is not None and not replaced:
            result = direct.execute(
                connection,
                (self._execution_options, connection._execution_options, execution_options),
                distilled_params,
            )
        if result is None:
            params = with_parameters(distilled_params, replaced)
            result = super()._execute_on_connection(connection, params, execution_options)
        if in_transaction_block(connection) and not _streams(
            self.get_execution_options(), connection.get_execution_options(), execution_options
        ):
            restore_before_next_statement(connection)
        if SEARCH_OBSERVERS:
            observer = SEARCH_OBSERVERS.get(connection.dialect)
            if observer is not None:
                observer(self, connection, distilled_params, execution_options)
        return cast(CursorResult[Any], result)


_DIRECT_RUN = "_mrl_pg_direct_run"


def _streams(*option_sets: Any) -> bool:
    """Whether execution options, merged in the order given (later ones win), fetch rows
    after the statement returns (``stream_results``, or ``yield_per`` which implies it)."""
    merged: dict[str, Any] = {}
    for options in option_sets:
        merged.update(options)
    return bool(merged.get("stream_results") or merged.get("yield_per"))
