"""Loading test tables: full vectors by binary COPY, then the HNSW indexes built once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine, Table, text

from mrl_pg.load import copy_vectors


def create_and_load(
    engine: Engine,
    table: Table,
    column: str,
    vectors: npt.NDArray[np.float32],
    other_columns: Mapping[str, Sequence[Any]],
) -> None:
    """Create ``table``, fill it, then build its indexes (much faster than the other order).

    The indexes are built by one process: a parallel HNSW build's graph depends on how the
    workers interleave, which would make recall figures vary from run to run."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL max_parallel_maintenance_workers = 0"))
        table.create(conn)
        for index in table.indexes:
            index.drop(conn)
        copy_vectors(conn, table, column, vectors, other_columns)
        for index in table.indexes:
            index.create(conn)
        conn.execute(text(f"ANALYZE {conn.dialect.identifier_preparer.quote(table.name)}"))


def decaying_vectors(rows: int, dims: int, seed: int) -> npt.NDArray[np.float32]:
    """Clustered vectors whose leading dimensions vary most, made here, not by mrl_pg."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dims))
    points = centres[rng.integers(0, 20, rows)] + 0.7 * rng.normal(size=(rows, dims))
    return (points / (1 + np.arange(dims) / 4)).astype(np.float32)
