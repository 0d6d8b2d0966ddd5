"""Remove what an unfinished online prefix change left on a table.

    mrl-pg abandon-online TABLE COLUMN [--schema SCHEMA] [--dsn URL]

An online ``op.add_mrl_prefix`` / ``op.resize_mrl_prefix`` that was interrupted leaves a
staging column (``<column>_mrl_next``), maybe its index, and the trigger that fills it, or,
when only the index was changing, a staging index (``..._next``) on the column; the table's
current prefix keeps working. Rerunning the migration carries on from there; this
command drops the leftovers instead. The database is ``--dsn``, else ``MRL_PG_DSN``.
"""

from __future__ import annotations

import argparse
import os

from sqlalchemy import create_engine

from mrl_pg.alembic.online.change import staging_column
from mrl_pg.alembic.online.run import abandon_online_change
from mrl_pg.errors import MRLError
from mrl_pg.tools.server import sqlalchemy_url


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", help="the table the online change was running on")
    parser.add_argument("column", help="the prefix column it was building, e.g. embedding_mrl")
    parser.add_argument("--schema", help="the table's schema (default: the search_path)")
    parser.add_argument("--dsn", help="database URL (default: MRL_PG_DSN)")


def run(args: argparse.Namespace) -> int:
    dsn = args.dsn or os.environ.get("MRL_PG_DSN")
    if not dsn:
        raise MRLError("name the database with --dsn or MRL_PG_DSN")
    engine = create_engine(sqlalchemy_url(dsn))
    try:
        with engine.begin() as conn:
            abandon_online_change(conn, args.table, args.column, schema=args.schema)
    finally:
        engine.dispose()
    print(
        f"dropped {staging_column(args.column)} with its index and trigger, and staging indexes"
        f" on {args.column}, if there were any"
    )
    return 0
