"""Checking a query vector before it reaches the database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from pgvector import HalfVector, Vector

from mrl_pg.errors import QueryVectorError
from mrl_pg.prefix import FullVector

QueryLike: TypeAlias = Sequence[float] | npt.NDArray[Any] | Vector | HalfVector

#: Largest finite half-precision value; larger values become infinity in a ``halfvec``.
HALF_MAX = 65504.0


def as_query_array(query: QueryLike, full: FullVector) -> npt.NDArray[np.float32]:
    """``query`` as a float32 array of ``full.dims`` finite values, or a QueryVectorError."""
    if isinstance(query, (Vector, HalfVector)):
        query = query.to_numpy()
    try:
        array = np.asarray(query, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise QueryVectorError(f"query vector is not a sequence of numbers: {exc}") from None
    if array.ndim != 1:
        raise QueryVectorError(
            f"query vector must be one-dimensional, got an array of shape {array.shape}"
        )
    if array.shape[0] != full.dims:
        raise QueryVectorError(
            f"query vector has {array.shape[0]} dimensions, the column has {full.dims}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise QueryVectorError(
            f"query vector holds {array[bad]} at index {bad}; NaN and infinity cannot be searched"
        )
    if full.half and np.abs(array).max(initial=0.0) > HALF_MAX:
        raise QueryVectorError(
            f"query vector has values beyond ±{HALF_MAX:g}, which a halfvec cannot hold"
        )
    return array
