"""ORM entry points: ``Model.mrl_search(...)`` and ``session.query(Model).mrl_search(...)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import Select
from sqlalchemy.orm import Query

from mrl_pg.query_vector import QueryLike
from mrl_pg.search import IterativeScan, PrefixChoice, mrl_search, plan_search
from mrl_pg.settings import SETTINGS_OPTION

_T = TypeVar("_T")


class MRLSearchMixin:
    """Gives a declarative model ``Model.mrl_search(query, k=10, ...)``."""

    @classmethod
    def mrl_search(
        cls,
        query: QueryLike,
        k: int = 10,
        *,
        prefix: PrefixChoice | Sequence[PrefixChoice] | None = None,
        candidates: int | Sequence[int] | None = None,
        oversample: float | None = None,
        ef_search: int | None = None,
        iterative_scan: IterativeScan | str | None = None,
        max_scan_tuples: int | None = None,
    ) -> Select[Any]:
        """A ``Select`` of ``(instance, distance)`` rows, nearest first; see
        :func:`mrl_pg.mrl_search` for the options."""
        return mrl_search(
            cls,
            query,
            k,
            prefix=prefix,
            candidates=candidates,
            oversample=oversample,
            ef_search=ef_search,
            iterative_scan=iterative_scan,
            max_scan_tuples=max_scan_tuples,
        )


class MRLQuery(Query[_T]):
    """A legacy ``Query`` with ``.mrl_search()``: ``sessionmaker(query_cls=MRLQuery)``."""

    def mrl_search(
        self,
        query: QueryLike,
        k: int = 10,
        *,
        prefix: PrefixChoice | Sequence[PrefixChoice] | None = None,
        candidates: int | Sequence[int] | None = None,
        oversample: float | None = None,
        ef_search: int | None = None,
        iterative_scan: IterativeScan | str | None = None,
        max_scan_tuples: int | None = None,
    ) -> Query[Any]:
        """This query's rows plus their ``distance``, nearest ``k`` first."""
        plan = plan_search(
            self.statement,  # type: ignore[arg-type]
            query,
            k,
            prefix=prefix,
            candidates=candidates,
            oversample=oversample,
            ef_search=ef_search,
            iterative_scan=iterative_scan,
            max_scan_tuples=max_scan_tuples,
        )
        return (
            self.session.query(*plan.columns, plan.distance)
            .order_by(plan.distance)
            .limit(plan.k)
            .execution_options(**{SETTINGS_OPTION: plan.settings})
        )
