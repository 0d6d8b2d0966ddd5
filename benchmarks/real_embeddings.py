"""Real text embeddings for the benchmarks: the lines of a text file embedded with WordLlama.

    python benchmarks/real_embeddings.py --text FILE --out vectors.npy
        [--queries-out queries.npy] [--limit 60000] [--query-count 1000] [--pca] [--seed 0]

Reads one text per line, skips empty lines and keeps the first of every duplicate (compared
after collapsing whitespace and case), shuffles them (by ``--seed``), and embeds ``--limit``
of them, plus ``--query-count`` others for ``--queries-out``, with WordLlama's
``l2_supercat`` model: a Matryoshka-trained text embedding of 256 dimensions, whose weights
ship inside the ``wordllama`` wheel (``pip install wordllama``; a benchmark-only dependency).
Rows whose vector equals an earlier row's (texts made of the same tokens) are dropped, so that
no two searched rows tie for a query and recall is not lowered by an arbitrary tie-break.

The files are float32 ``(rows, 256)`` arrays of unit-norm vectors, for ``mrl-pg bench
--vectors vectors.npy --queries queries.npy`` and ``mrl-pg evaluate`` alike.

``--pca`` rotates both files onto the principal components of the searched vectors, in order
of decreasing variance (fitted on the vectors only, not the queries). The rotation is
orthogonal and not centred, so every full-vector distance, and so every true neighbour, is
unchanged; only what a prefix of the first dimensions keeps differs.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, required=True, help="one text per line")
    parser.add_argument("--out", type=Path, required=True, help="the searched vectors (.npy)")
    parser.add_argument("--queries-out", type=Path, help="held-out query vectors (.npy)")
    parser.add_argument("--limit", type=int, default=60_000, help="searched rows (default 60000)")
    parser.add_argument("--query-count", type=int, default=1000,
                        help="queries for --queries-out (default 1000)")
    parser.add_argument("--pca", action="store_true",
                        help="rotate onto the vectors' principal components, by variance")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    args = parser.parse_args()

    wanted = args.limit + (args.query_count if args.queries_out else 0)
    texts = distinct_lines(args.text)
    random.Random(args.seed).shuffle(texts)
    vectors = distinct_rows(embed(texts[: wanted + wanted // 10]))
    if len(vectors) < wanted:
        sys.exit(f"{args.text}: only {len(vectors)} distinct texts and vectors, {wanted} wanted")
    searched, queries = vectors[: args.limit], vectors[args.limit : wanted]
    if args.pca:
        rotation = principal_axes(searched)
        searched, queries = searched @ rotation, queries @ rotation
    np.save(args.out, np.ascontiguousarray(searched, dtype=np.float32))
    print(f"{args.out}: {len(searched)} x {searched.shape[1]}"
          + (", PCA-ordered" if args.pca else ""))
    if args.queries_out:
        np.save(args.queries_out, np.ascontiguousarray(queries, dtype=np.float32))
        print(f"{args.queries_out}: {len(queries)} x {queries.shape[1]}")


def distinct_lines(path: Path) -> list[str]:
    """Non-empty lines, the first of each set of lines equal up to whitespace and case."""
    seen: set[str] = set()
    texts: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            text = " ".join(line.split())
            key = text.casefold()
            if text and key not in seen:
                seen.add(key)
                texts.append(text)
    return texts


def embed(texts: list[str]) -> Matrix:
    """Unit-norm 256-dimension WordLlama ``l2_supercat`` embeddings of ``texts``."""
    try:
        import wordllama
    except ImportError:
        sys.exit("real_embeddings.py needs WordLlama: pip install wordllama")
    # The wheel ships the weights and tokenizer in the package's own weights/ and tokenizers/
    # folders: point the loader there so that nothing is downloaded.
    model = wordllama.WordLlama.load(
        cache_dir=Path(wordllama.__file__).parent, disable_download=True
    )
    return np.asarray(model.embed(texts, norm=True), dtype=np.float32)


def distinct_rows(vectors: Matrix) -> Matrix:
    """``vectors`` without the rows equal to an earlier row, in their order."""
    _, first = np.unique(vectors, axis=0, return_index=True)
    return vectors[np.sort(first)]


def principal_axes(vectors: Matrix) -> Matrix:
    """An orthogonal matrix whose columns are the principal axes of ``vectors``, the axis of
    most variance first."""
    centred = vectors.astype(np.float64) - vectors.mean(axis=0)
    variances, axes = np.linalg.eigh(centred.T @ centred)
    return axes[:, np.argsort(variances)[::-1]].astype(np.float32)


if __name__ == "__main__":
    main()
