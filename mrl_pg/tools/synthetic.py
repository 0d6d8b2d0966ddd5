"""MRL-like test vectors and exact ground truth, for tests, the demo and benchmarks.

Matryoshka-trained models put most of a vector's signal in its first dimensions. The generator
mimics that: points are drawn around cluster centres, each dimension scaled by a factor that
decays with its index, and every vector is L2-normalised like a real embedding.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from mrl_pg.prefix.spec import Distance

Matrix = npt.NDArray[np.float32]

#: Rows :func:`mrl_like_blocks` makes per block.
BLOCK_ROWS = 8192


def dimension_scales(dims: int, half_life: float = 32.0) -> npt.NDArray[np.float64]:
    """Per-dimension standard deviation: 1 for the first, ``1/sqrt(2)`` at ``half_life``."""
    return 1.0 / np.sqrt(1.0 + np.arange(dims) / half_life)


def mrl_like_vectors(
    rows: int,
    dims: int,
    *,
    clusters: int = 100,
    spread: float = 0.6,
    seed: int = 0,
) -> Matrix:
    """``rows`` normalised, clustered vectors whose leading dimensions carry the most weight.

    ``spread`` is the within-cluster standard deviation relative to the spread of the centres.
    """
    out = np.empty((rows, dims), dtype=np.float32)
    start = 0
    for block in mrl_like_blocks(rows, dims, clusters=clusters, spread=spread, seed=seed):
        out[start : start + len(block)] = block
        start += len(block)
    return out


def mrl_like_blocks(
    rows: int,
    dims: int,
    *,
    clusters: int = 100,
    spread: float = 0.6,
    seed: int = 0,
) -> Iterator[Matrix]:
    """The vectors of :func:`mrl_like_vectors` (same arguments, same values), made and
    yielded ``BLOCK_ROWS`` rows at a time, so that a table of any size can be generated
    without holding all of it in memory."""
    rng = np.random.default_rng(seed)
    scales = dimension_scales(dims)
    centres = rng.standard_normal((clusters, dims))
    labels = rng.integers(0, clusters, size=rows)
    for start in range(0, rows, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, rows)
        chunk = centres[labels[start:stop]] + spread * rng.standard_normal((stop - start, dims))
        yield normalize((chunk * scales).astype(np.float32))


def queries_near(vectors: Matrix, count: int, *, noise: float = 0.5, seed: int = 1) -> Matrix:
    """``count`` queries, each a stored vector moved by ``noise`` (in per-dimension units)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(vectors), size=count)
    return _moved(vectors[picks], noise, rng)


def queries_near_each(vectors: Matrix, *, noise: float = 0.5, seed: int = 1) -> Matrix:
    """One query near each of ``vectors``, moved by ``noise`` as in :func:`queries_near`: for
    a table too large to hold, pick the rows while generating it, then move them."""
    return _moved(vectors, noise, np.random.default_rng(seed))


def _moved(vectors: Matrix, noise: float, rng: np.random.Generator) -> Matrix:
    scales = dimension_scales(vectors.shape[1])
    jitter = noise * rng.standard_normal(vectors.shape) * scales
    jitter /= np.sqrt(vectors.shape[1])
    return normalize(vectors + jitter.astype(np.float32))


def normalize(vectors: Matrix) -> Matrix:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    normalized: Matrix = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return normalized


def exact_neighbors(
    vectors: Matrix, queries: Matrix, k: int, distance: Distance | str = Distance.COSINE
) -> npt.NDArray[np.int64]:
    """Row indices of each query's ``k`` nearest vectors, nearest first (exact, in numpy)."""
    distance = Distance.parse(distance)
    data = vectors.astype(np.float64)
    result = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), 256):
        block = queries[start : start + 256].astype(np.float64)
        scores = exact_distances(data, block, distance)
        top = np.argpartition(scores, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)
        result[start : start + len(block)] = np.take_along_axis(top, order, axis=1)
    return result


def exact_distances(
    vectors: npt.NDArray[np.float64], queries: npt.NDArray[np.float64], distance: Distance
) -> npt.NDArray[np.float64]:
    """pgvector's distances between every query (rows) and every vector (columns)."""
    dots: npt.NDArray[np.float64] = queries @ vectors.T
    if distance is Distance.INNER_PRODUCT:
        return -dots
    if distance is Distance.COSINE:
        norms = np.linalg.norm(queries, axis=1)[:, None] * np.linalg.norm(vectors, axis=1)[None]
        cosine: npt.NDArray[np.float64] = 1.0 - dots / np.maximum(norms, 1e-300)
        return cosine
    squared = (queries**2).sum(1)[:, None] + (vectors**2).sum(1)[None] - 2 * dots
    euclidean: npt.NDArray[np.float64] = np.sqrt(np.maximum(squared, 0.0))
    return euclidean


def recall_at_k(found: list[list[int]], truth: npt.NDArray[np.int64]) -> float:
    """Mean fraction of each query's true ``k`` neighbours that ``found`` contains."""
    k = truth.shape[1]
    hits = sum(len(set(f[:k]) & set(t.tolist())) for f, t in zip(found, truth, strict=True))
    return float(hits / (k * len(truth)))
