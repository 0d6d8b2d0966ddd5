"""The statement type of a search: a ``Select`` that makes its pgvector settings around its
own execution, and nothing else's.

``SearchSelect`` is an ordinary ``Select`` (``.where``, ``.limit``, ``.options``,
``.execution_options``, ``.params`` and the other generative methods copy it, subclass and
settings included) that SQLAlchemy compiles and caches like any other. Only its execution
differs: it prepares the connection for the binary query vector
(:func:`~mrl_pg.search.query_vector.prepare_connection`) and runs with its settings in effect
(:func:`~mrl_pg.search.hnsw_settings.run_with_settings`).

A search embedded in another statement (``search.subquery()`` in a ``select()``, say) runs as
part of that statement, without its settings; with psycopg, on a connection that has not run a
search yet, its binary query vector cannot even be sent. Make the outer statement a search too::

    counted = SearchSelect(func.count(), settings=search.search_settings)
    conn.scalar(counted.select_from(search.subquery()))
"""

from __future__ import annotations

from functools import partial
from typing import Any

from sqlalchemy import Select
from sqlalchemy.engine import Connection, CursorResult

from mrl_pg.search.hnsw_settings import Settings, run_with_settings, streams_results
from mrl_pg.search.query_vector import prepare_connection


class SearchSelect(Select[Any]):
    """A ``Select`` that applies ``search_settings`` (``(setting, value)`` pairs) while it
    runs."""

    inherit_cache = True  # the settings are not SQL: every search of one shape shares a compile
    search_settings: Settings = ()

    def __init__(self, *entities: Any, settings: Settings = ()) -> None:
        super().__init__(*entities)
        self.search_settings = settings

    def _execute_on_connection(
        self, connection: Connection, distilled_params: Any, execution_options: Any
    ) -> CursorResult[Any]:
        # A private SQLAlchemy hook (2.0, 2.1): Connection.execute/scalar/scalars, Session.execute
        # (ORM statements included) and the asyncio wrappers all run a statement by calling it.
        # tests/test_search_hooks.py fails if SQLAlchemy renames it or stops calling it.
        prepare_connection(connection)
        streaming = streams_results(
            self.get_execution_options(), connection.get_execution_options(), execution_options
        )
        execute = partial(
            super()._execute_on_connection, connection, distilled_params, execution_options
        )
        return run_with_settings(connection, self.search_settings, streaming, execute)
