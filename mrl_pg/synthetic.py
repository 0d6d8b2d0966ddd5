"""Synthetic MRL-like data and exact ground truth; this import path is kept for existing
code, the module is :mod:`mrl_pg.tools.synthetic`."""

from mrl_pg.tools.synthetic import (
    Matrix,
    exact_distances,
    exact_neighbors,
    mrl_like_vectors,
    queries_near,
    recall_at_k,
)

__all__ = [
    "Matrix",
    "exact_distances",
    "exact_neighbors",
    "mrl_like_vectors",
    "queries_near",
    "recall_at_k",
]
