"""Exceptions raised by mrl_pg.

Every error is raised before any SQL runs and names the offending value, so a bad call never
leaves a half-applied change behind. All of them derive from :class:`MRLError`, and from
``ValueError`` or ``TypeError`` as their meaning suggests, so existing ``except ValueError``
handlers keep working.
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


class PgvectorFeatureWarning(UserWarning):
    """The database's pgvector lacks a setting a search asked for (``hnsw.iterative_scan``
    and its limits came with pgvector 0.8); the search ran without it."""
