"""ORM entry points: ``Model.mrl_search(...)`` and ``session.query(Model).mrl_search(...)``."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import func
from sqlalchemy.orm import FromStatement, Query

from mrl_pg.search.query_vector import QueryLike, as_query_array
from mrl_pg.search.search_select import SearchSelect
from mrl_pg.search.statement import SearchOptions, SearchRequest, mrl_search, plan_search

_T = TypeVar("_T")


class MRLSearchMixin:
    """Gives a declarative model ``Model.mrl_search(query, k=10, ...)``."""

    @classmethod
    def mrl_search(cls, query: QueryLike, k: int = 10, **options: Any) -> SearchSelect:
        """A ``Select`` of ``(instance, distance)`` rows, nearest first; the options are
        those of :func:`mrl_pg.mrl_search`."""
        return mrl_search(cls, query, k, **options)


class MRLQuery(Query[_T]):
    """A legacy ``Query`` with ``.mrl_search()``: ``sessionmaker(query_cls=MRLQuery)``."""

    def mrl_search(self, query: QueryLike, k: int = 10, **options: Any) -> Query[Any]:
        """This query's rows plus their ``distance``, nearest ``k`` first; the options are
        those of :func:`mrl_pg.mrl_search`. The result is a finished statement: it refuses
        further criteria (``filter``, ``order_by``, ...) as ``Query.from_statement`` does."""
        base: Any = self.statement
        search_options = SearchOptions(k, **options)
        plan = plan_search(base, query, search_options)
        search = plan.select()
        search.search_request = SearchRequest(
            base, search_options, as_query_array(query, plan.full), {}
        )
        return SearchQuery([*plan.columns, plan.distance], self.session).from_statement(search)


class SearchQuery(Query[_T]):
    """The legacy ``Query`` of one search, made with ``Query.from_statement``; it runs the
    search statement itself, so that the search's settings apply."""

    def _statement_20(
        self, for_statement: bool = False, use_legacy_query_style: bool = True
    ) -> Any:
        # A private SQLAlchemy hook (1.4 to 2.1): every legacy Query runs, compiles and nests
        # the statement it returns. From a from_statement() Query that is a FromStatement
        # around the search, whose own execution would skip SearchSelect's; the search is
        # returned instead, with the Query's execution options. tests/test_search_hooks.py
        # fails if SQLAlchemy changes this.
        wrapper = super()._statement_20(for_statement, use_legacy_query_style)
        if not isinstance(wrapper, FromStatement) or not isinstance(
            wrapper.element, SearchSelect
        ):
            raise RuntimeError(f"expected a FromStatement around a search, got {wrapper!r}")
        options = wrapper.get_execution_options()
        return wrapper.element.execution_options(**options) if options else wrapper.element

    def count(self) -> int:
        """How many rows the search returns (at most ``k``), counted with its settings."""
        search: Any = self.statement
        counting = SearchSelect(func.count(), settings=search.search_settings)
        return int(self.session.scalar(counting.select_from(search.subquery())) or 0)
