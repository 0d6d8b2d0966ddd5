"""ORM entry points: ``Model.mrl_search(...)`` and ``session.query(Model).mrl_search(...)``."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Query

from mrl_pg.search.hnsw_settings import SETTINGS_OPTION
from mrl_pg.search.query_vector import QueryLike
from mrl_pg.search.statement import SearchOptions, mrl_search, plan_search

_T = TypeVar("_T")


class MRLSearchMixin:
    """Gives a declarative model ``Model.mrl_search(query, k=10, ...)``."""

    @classmethod
    def mrl_search(cls, query: QueryLike, k: int = 10, **options: Any) -> Select[Any]:
        """A ``Select`` of ``(instance, distance)`` rows, nearest first; the options are
        those of :func:`mrl_pg.mrl_search`."""
        return mrl_search(cls, query, k, **options)


class MRLQuery(Query[_T]):
    """A legacy ``Query`` with ``.mrl_search()``: ``sessionmaker(query_cls=MRLQuery)``."""

    def mrl_search(self, query: QueryLike, k: int = 10, **options: Any) -> Query[Any]:
        """This query's rows plus their ``distance``, nearest ``k`` first; the options are
        those of :func:`mrl_pg.mrl_search`."""
        plan = plan_search(self.statement, query, SearchOptions(k, **options))  # type: ignore[arg-type]
        search: Query[Any] = (
            self.session.query(*plan.columns, plan.distance)
            .order_by(plan.distance)
            .limit(plan.k)
            .execution_options(**{SETTINGS_OPTION: plan.settings})
        )
        return search
