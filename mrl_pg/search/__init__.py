"""Searching: the statement (:mod:`.statement`), its candidate counts and pgvector settings
(:mod:`.defaults`), how those settings reach the server (:mod:`.hnsw_settings`), the query
vector (:mod:`.query_vector`) and the ORM entry points (:mod:`.orm`)."""

from mrl_pg.search.defaults import IterativeScan
from mrl_pg.search.orm import MRLQuery, MRLSearchMixin
from mrl_pg.search.statement import mrl_search

__all__ = ["IterativeScan", "MRLQuery", "MRLSearchMixin", "mrl_search"]
