"""Matryoshka (MRL) two-stage vector search for PostgreSQL, pgvector and SQLAlchemy.

Alembic support is imported on its own, ``import mrl_pg.alembic``: importing it registers the
migration operations and autogenerate hooks. The live recall monitor is ``mrl_pg.monitor``.
"""

from importlib import metadata

from mrl_pg.errors import (
    ConnectionClosedError,
    DistributionError,
    IndexLimitError,
    LoadDataError,
    MissingDependencyError,
    MissingExtensionError,
    MonitorConfigError,
    MRLError,
    NotAVectorColumnError,
    PgvectorFeatureWarning,
    PgvectorVersionError,
    PrefixConfigError,
    PrefixSelectionError,
    QueryVectorError,
    SearchParameterError,
    UnknownColumnError,
    UnknownDistanceError,
    UnknownStorageError,
)
from mrl_pg.load import copy_rows, copy_vectors
from mrl_pg.prefix.declare import Prefix, add_prefix_column, mrl_prefix, prefixes_of
from mrl_pg.prefix.spec import Distance, PrefixSpec, Storage
from mrl_pg.search.orm import MRLQuery, MRLSearchMixin
from mrl_pg.search.statement import IterativeScan, mrl_search
from mrl_pg.sql import install

__version__ = metadata.version("mrl-pg")

__all__ = [
    "ConnectionClosedError",
    "Distance",
    "DistributionError",
    "IndexLimitError",
    "IterativeScan",
    "LoadDataError",
    "MRLError",
    "MRLQuery",
    "MRLSearchMixin",
    "MissingDependencyError",
    "MissingExtensionError",
    "MonitorConfigError",
    "NotAVectorColumnError",
    "PgvectorFeatureWarning",
    "PgvectorVersionError",
    "Prefix",
    "PrefixConfigError",
    "PrefixSelectionError",
    "PrefixSpec",
    "QueryVectorError",
    "SearchParameterError",
    "Storage",
    "UnknownColumnError",
    "UnknownDistanceError",
    "UnknownStorageError",
    "add_prefix_column",
    "copy_rows",
    "copy_vectors",
    "install",
    "mrl_prefix",
    "mrl_search",
    "prefixes_of",
]
