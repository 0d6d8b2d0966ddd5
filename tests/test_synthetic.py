"""The synthetic generator in blocks: the same vectors and queries as the whole-array form."""

from __future__ import annotations

import numpy as np

from mrl_pg.tools.synthetic import (
    BLOCK_ROWS,
    mrl_like_blocks,
    mrl_like_vectors,
    queries_near,
    queries_near_each,
)


def test_blocks_are_the_whole_array_cut_into_pieces() -> None:
    rows = 2 * BLOCK_ROWS + 100
    blocks = list(mrl_like_blocks(rows, 24, seed=5))

    assert [len(b) for b in blocks] == [BLOCK_ROWS, BLOCK_ROWS, 100]
    assert all(b.dtype == np.float32 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks), mrl_like_vectors(rows, 24, seed=5))


def test_blocks_depend_on_the_seed() -> None:
    first = next(mrl_like_blocks(10, 8, seed=1))
    second = next(mrl_like_blocks(10, 8, seed=2))

    assert not np.array_equal(first, second)


def test_queries_near_each_moves_every_vector_a_little() -> None:
    vectors = mrl_like_vectors(200, 64, seed=7)

    queries = queries_near_each(vectors[:50], seed=8)

    assert queries.shape == (50, 64) and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-5)
    similarity = (queries * vectors[:50]).sum(axis=1)
    assert similarity.min() > 0.9 and not np.array_equal(queries, vectors[:50])
    np.testing.assert_array_equal(queries, queries_near_each(vectors[:50], seed=8))


def test_queries_near_still_picks_then_moves() -> None:
    vectors = mrl_like_vectors(300, 32, seed=9)

    queries = queries_near(vectors, 40, seed=10)

    nearest = (queries @ vectors.T).argmax(axis=1)
    picks = np.random.default_rng(10).integers(0, len(vectors), size=40)
    assert (nearest == picks).mean() > 0.9
