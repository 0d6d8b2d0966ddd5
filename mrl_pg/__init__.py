"""Matryoshka (MRL) two-stage vector search for PostgreSQL, pgvector and SQLAlchemy."""

from mrl_pg.errors import (
    IndexLimitError,
    MissingExtensionError,
    MRLError,
    NotAVectorColumnError,
    PgvectorFeatureWarning,
    PrefixConfigError,
    PrefixSelectionError,
    QueryVectorError,
    SearchParameterError,
    UnknownDistanceError,
    UnknownStorageError,
)
from mrl_pg.prefix.declare import Prefix, add_prefix_column, mrl_prefix, prefixes_of
from mrl_pg.prefix.spec import Distance, PrefixSpec, Storage
from mrl_pg.search.orm import MRLQuery, MRLSearchMixin
from mrl_pg.search.statement import IterativeScan, mrl_search

__version__ = "0.1.0"

__all__ = [
    "Distance",
    "IndexLimitError",
    "IterativeScan",
    "MRLError",
    "MRLQuery",
    "MRLSearchMixin",
    "MissingExtensionError",
    "NotAVectorColumnError",
    "PgvectorFeatureWarning",
    "Prefix",
    "PrefixConfigError",
    "PrefixSelectionError",
    "PrefixSpec",
    "QueryVectorError",
    "SearchParameterError",
    "Storage",
    "UnknownDistanceError",
    "UnknownStorageError",
    "add_prefix_column",
    "mrl_prefix",
    "mrl_search",
    "prefixes_of",
]
