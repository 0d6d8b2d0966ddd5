"""Searching: the statement (:mod:`.statement`), its candidate counts and pgvector settings
(:mod:`.defaults`), the statement type that applies those settings while it runs
(:mod:`.search_select`, through :mod:`.hnsw_settings`), the query vector (:mod:`.query_vector`)
and the ORM entry points (:mod:`.orm`)."""

from mrl_pg.search.defaults import IterativeScan
from mrl_pg.search.orm import MRLQuery, MRLSearchMixin
from mrl_pg.search.search_select import SearchSelect
from mrl_pg.search.statement import mrl_search

__all__ = ["IterativeScan", "MRLQuery", "MRLSearchMixin", "SearchSelect", "mrl_search"]
