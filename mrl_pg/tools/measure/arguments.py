"""Command-line options shared by ``bench`` and ``evaluate``: where the data and the database
come from, and comma-separated lists of sizes."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Engine, create_engine

from mrl_pg.tools.measure.errors import TooFewRowsError
from mrl_pg.tools.measure.inputs import Dataset, from_files, from_table, synthetic
from mrl_pg.tools.server import database_url, sqlalchemy_url

_T = TypeVar("_T")


def comma_list(convert: Callable[[str], _T]) -> Callable[[str], list[_T]]:
    """An argparse type for ``1,2,3``."""

    def parse(value: str) -> list[_T]:
        try:
            items = [convert(part.strip()) for part in value.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{value!r}: {exc}") from None
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        return items

    return parse


def add_source_arguments(parser: argparse.ArgumentParser, default_dims: int) -> None:
    data = parser.add_argument_group("data (generated unless a file or table is given)")
    data.add_argument("--rows", type=int, default=None,
                      help="rows to generate (default 10000), or a random sample (by --seed) "
                           "of this many to read from --vectors or --table (default: all)")
    data.add_argument("--dims", type=int, default=default_dims, help="generated dimensions")
    data.add_argument("--vectors", type=Path, help="a (rows, dims) .npy file of embeddings")
    data.add_argument("--queries", type=Path,
                      help="a .npy file of queries (default: held out from the vectors)")
    data.add_argument("--query-count", type=int, default=200, help="queries to run")
    data.add_argument("--seed", type=int, default=0, help="random seed for data and sampling")
    db = parser.add_argument_group("database")
    db.add_argument("--dsn", help="database URL (default: MRL_PG_DSN, else the embedded server)")
    db.add_argument("--table", help="an existing table to read vectors from (read only)")
    db.add_argument("--column", default="embedding", help="its vector column")


def engine_from_args(args: argparse.Namespace) -> Engine:
    return create_engine(sqlalchemy_url(args.dsn) if args.dsn else database_url())


def dataset_from_args(args: argparse.Namespace, engine: Callable[[], Engine]) -> Dataset:
    """The data set the options name; ``engine`` is called only for a table."""
    if args.query_count < 1:
        raise TooFewRowsError(f"--query-count must be positive, got {args.query_count}")
    if args.table is not None:
        return from_table(engine(), args.table, args.column, args.query_count, args.rows,
                          args.seed)
    if args.vectors is not None:
        return from_files(args.vectors, args.queries, args.query_count, args.rows, args.seed)
    return synthetic(args.rows or 10_000, args.dims, args.query_count, args.seed)
