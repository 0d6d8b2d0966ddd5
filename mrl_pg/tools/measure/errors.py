"""Errors of the measuring commands: bad input files, tables and sizes."""

from __future__ import annotations

from mrl_pg.errors import MRLError


class VectorFileError(MRLError, ValueError):
    """An ``.npy`` file is missing, unreadable, or not a 2-d array of finite numbers."""


class DimensionMismatchError(MRLError, ValueError):
    """The queries do not have the dimensions of the vectors."""


class UnknownTableError(MRLError, LookupError):
    """The table, or its column, does not exist."""


class TooFewRowsError(MRLError, ValueError):
    """There are not enough rows for the requested ``k`` or number of queries."""


class SegmentOptionError(MRLError, ValueError):
    """``--segment`` was given without a table to read the segment column from, or with a
    query file (its queries are held out of each segment)."""
