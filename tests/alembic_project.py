"""An Alembic project in a temporary folder over a table ``items``, and what tests check of
it: the fixtures ``project`` (an empty table, for tests of checks and rendering) and
``loaded_project`` (``ROWS`` rows, for tests of what happens to data), and their helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, Table, select, text

from mrl_pg.alembic import MRLPrefix
from mrl_pg.alembic.reflect import reflect_prefixes
from mrl_pg.load import copy_vectors
from mrl_pg.tools.synthetic import exact_distances, mrl_like_vectors
from tests.conftest import schema_engine

#: Enough rows for an online backfill of many batches (with a small ``batch_size``) and an
#: index build that spills out of a small ``maintenance_work_mem``.
ROWS = 3_000
DIMS = 64
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=3)
#: Rows whose vectors are the queries of the search checks: concurrent writers leave them (and
#: row 0) alone.
SEARCHED_IDS = tuple(range(5, ROWS, ROWS // 20))
#: Lowest recall@10 a search check accepts: exact ground truth, an approximate index...
MIN_RECALL = 0.9
#: ...and enough candidates that even an 8-dim prefix would keep the true neighbours.
CANDIDATES = 300
#: The prefix of PREFIX_16 with only its index changed: distance, HNSW parameters.
L2_16 = (
    'add_prefix_column(items, "embedding", 16, name="embedding_mrl", distance="l2", m=8, '
    "ef_construction=32)"
)

ENV_PY = """
import importlib
import sys

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import mrl_pg.alembic
from tests.own_schema import own_tables_only

sys.path.insert(0, context.config.attributes["project"])
import models

importlib.reload(models)
config = context.config


def include_object(obj, name, type_, reflected, compare_to):
    return name != "ignored_by_user"


if context.is_offline_mode():
    context.configure(url=config.attributes["url"], target_metadata=models.metadata,
                      literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.attributes["url"], poolclass=NullPool,
                           connect_args={"options": config.attributes["options"]})
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=models.metadata,
                          include_name=own_tables_only(connection), include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
"""

MODELS_PY = """
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Column, Integer, MetaData, Table

from mrl_pg import add_prefix_column

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True),
              Column("embedding", VECTOR({dims})))
{prefix}
"""


def items_table() -> Table:
    return Table(
        "items", MetaData(), Column("id", Integer, primary_key=True), Column("embedding", VECTOR(DIMS))
    )


@pytest.fixture
def project(
    tmp_path: Path, database_url: str, server_engine: Engine
) -> Iterator[tuple[Config, Engine, Path]]:
    """The project over an empty table."""
    yield from alembic_project(tmp_path, database_url, server_engine, rows=0)


@pytest.fixture
def loaded_project(
    tmp_path: Path, database_url: str, server_engine: Engine
) -> Iterator[tuple[Config, Engine, Path]]:
    """The project over a table of ``ROWS`` rows: ``id`` i holds ``VECTORS[i]``."""
    yield from alembic_project(tmp_path, database_url, server_engine, rows=ROWS)


def alembic_project(
    tmp_path: Path, database_url: str, server_engine: Engine, rows: int
) -> Iterator[tuple[Config, Engine, Path]]:
    with schema_engine(database_url, server_engine) as engine:
        with engine.begin() as conn:
            table = items_table()
            table.create(conn)
            if rows:
                copy_vectors(conn, table, "embedding", VECTORS[:rows], {"id": range(rows)})
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        (tmp_path / "versions").mkdir()
        (tmp_path / "env.py").write_text(ENV_PY)
        (tmp_path / "script.py.mako").write_text(SCRIPT_MAKO)
        config = Config()
        config.set_main_option("script_location", str(tmp_path))
        config.attributes.update(
            project=str(tmp_path), url=database_url, options=f"-c search_path={schema},public"
        )
        yield config, engine, tmp_path


SCRIPT_MAKO = '''"""${message}"""
from alembic import op
import sqlalchemy as sa
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = None
depends_on = None


def upgrade():
    ${upgrades if upgrades else "pass"}


def downgrade():
    ${downgrades if downgrades else "pass"}
'''


def write_models(folder: Path, prefix_call: str) -> None:
    (folder / "models.py").write_text(MODELS_PY.format(dims=DIMS, prefix=prefix_call))


def checksum(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT count(*), md5(string_agg(embedding::text, ',' ORDER BY id)) FROM items")
        ).one()
    return int(row[0]), str(row[1])


def rows_updated(conn: Connection) -> int:
    """Rows of ``items`` updated so far (``pg_stat_user_tables.n_tup_upd``), this
    connection's own updates included: a backend's counts are flushed once it is idle, and
    read in a later transaction. Commits the connection's transaction."""
    conn.execute(text("SELECT pg_stat_force_next_flush()"))
    conn.commit()
    updated = conn.execute(text(
        "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relid = 'items'::regclass"
    )).scalar_one()
    conn.commit()
    return int(updated)


def row_versions(engine: Engine) -> tuple[int, str]:
    """The table's file and every row version's place and creating transaction: unchanged
    unless the table was rewritten or its rows updated."""
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT pg_relation_filenode('items'),"
            " md5(string_agg(ctid::text || xmin::text, ',' ORDER BY id)) FROM items"
        )).one()
    return int(row[0]), str(row[1])


def prefix_state(engine: Engine) -> dict[str, MRLPrefix]:
    with engine.connect() as conn:
        return reflect_prefixes(conn, "items", None)


def assert_prefix_values(engine: Engine, prefix: MRLPrefix) -> None:
    """Every row's prefix column holds the prefix of its full vector (an index-only prefix
    holds nothing: its values are the expression itself)."""
    if not prefix.stored:
        return
    spec = prefix.spec()
    with engine.connect() as conn:
        expected = spec.expression(text("embedding")).compile(
            conn, compile_kwargs={"literal_binds": True}
        )
        wrong = conn.execute(
            text(f"SELECT count(*) FROM items WHERE {prefix.column} IS DISTINCT FROM {expected}")
        ).scalar_one()
        head = conn.execute(text(f"SELECT {prefix.column}::text FROM items WHERE id = 0")).scalar_one()
    assert wrong == 0
    if prefix.storage == "bit":
        assert head == "".join("1" if v > 0 else "0" for v in VECTORS[0][: prefix.dims])
    else:
        values = np.array([float(v) for v in head.strip("[]").split(",")])
        want = VECTORS[0][: prefix.dims].astype(np.float64)
        if prefix.distance == "inner_product":
            want = want / np.linalg.norm(want)
        np.testing.assert_allclose(values, want, rtol=2e-3, atol=1e-3)


def assert_search_recall(engine: Engine, prefix_name: str, *, sql_function: bool = False) -> None:
    """Searches through the table's current prefix ``prefix_name`` (``mrl_search()``, or the
    SQL function): each returns the exact full-vector distances of the rows it returns, and
    their recall@10 is at least ``MIN_RECALL`` against an exact numpy search of the same
    snapshot, so that concurrent writers cannot skew it. The queries are the vectors of
    ``SEARCHED_IDS``; a returned row counts as a hit when its distance is within the 10th
    nearest one, so that rows of equal vectors are interchangeable."""
    from mrl_pg import mrl_search
    from mrl_pg.prefix.declare import add_prefix_column

    k = 10
    table = items_table()
    current = prefix_state(engine)[prefix_name]
    add_prefix_column(table, "embedding", current.dims, name=prefix_name, distance=current.distance,
                      storage=current.storage, m=current.m, ef_construction=current.ef_construction,
                      stored=current.stored)
    distance = current.spec().distance
    found: list[list[tuple[int, float]]] = []
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn:
        rows = conn.execute(select(table.c.id, table.c.embedding)).all()
        for i in SEARCHED_IDS:
            if sql_function:
                found.append([(pk["id"], d) for pk, d in conn.execute(
                    text("SELECT pk, distance FROM mrl_search('items', CAST(:q AS vector), :k,"
                         " candidates => :c, prefix_column => :p)"),
                    {"q": str(VECTORS[i].tolist()), "k": k, "c": CANDIDATES, "p": prefix_name},
                )])
            else:
                found.append([(row.id, row.distance) for row in conn.execute(
                    mrl_search(table, VECTORS[i], k=k, prefix=prefix_name, candidates=CANDIDATES)
                )])
    position = {row.id: n for n, row in enumerate(rows)}
    stored = np.array([np.asarray(row.embedding, np.float64) for row in rows])
    queries = VECTORS[list(SEARCHED_IDS)].astype(np.float64)
    exact = exact_distances(stored, queries, distance)
    hits = 0
    for query, results in enumerate(found):
        assert len(results) == k
        ids = [position[row_id] for row_id, _ in results]
        np.testing.assert_allclose([d for _, d in results], exact[query, ids], atol=1e-5)
        kth = np.partition(exact[query], k - 1)[k - 1]
        hits += int(np.sum(exact[query, ids] <= kth + 1e-9))
    recall = hits / (k * len(found))
    assert recall >= MIN_RECALL, f"recall@{k} {recall:.3f} through {current}"


def revision(config: Config, folder: Path, message: str) -> str:
    script = command.revision(config, message=message, autogenerate=True)
    assert script is not None and not isinstance(script, list)
    return Path(script.path).read_text()
