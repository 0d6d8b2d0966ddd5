"""Index-only prefixes through Alembic: autogenerate, upgrade, downgrade, switches to and
from stored prefixes, online builds that write no row, interruptions, bad switches refused
before any DDL, and the offline script."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Connection, Engine, text

from mrl_pg import IndexLimitError, NotAVectorColumnError
from mrl_pg.alembic import MRLPrefix, abandon_online_change
from tests.alembic_project import (
    DIMS,
    ROWS,
    assert_prefix_values,
    assert_search_recall,
    checksum,
    prefix_state,
    revision,
    row_versions,
    rows_updated,
    write_models,
)
from tests.online_project import check_quietly, interrupted, online_revision

pytest_plugins = ["tests.alembic_project"]

INDEX_ONLY_16 = 'add_prefix_column(items, "embedding", 16, name="embedding_mrl", stored=False)'
INDEX_ONLY_32 = (
    'add_prefix_column(items, "embedding", 32, name="embedding_mrl", storage="vector", '
    "stored=False)"
)
STORED_32 = 'add_prefix_column(items, "embedding", 32, name="embedding_mrl", storage="vector")'
INDEX_ONLY_BIT_48 = (
    'add_prefix_column(items, "embedding", 48, name="embedding_mrl", storage="bit", '
    'distance="inner_product", stored=False)'
)
#: Model, operation autogenerate writes, whether the step writes rows.
STEPS = [
    (INDEX_ONLY_16, "op.add_mrl_prefix", False),
    (INDEX_ONLY_32, "op.resize_mrl_prefix", False),
    (STORED_32, "op.resize_mrl_prefix", True),
    (INDEX_ONLY_BIT_48, "op.resize_mrl_prefix", False),
    ("", "op.drop_mrl_prefix", False),
]
INDEX_BUILD_STOP = dict(
    announcement="building", statement="CREATE INDEX CONCURRENTLY",
    lock="LOCK TABLE items IN ROW EXCLUSIVE MODE",
)


def hnsw_indexes(engine: Engine) -> list[tuple[str, bool]]:
    """The HNSW indexes of ``items``: name, valid."""
    with engine.connect() as conn:
        return [
            (row.relname, row.indisvalid)
            for row in conn.execute(text(
                "SELECT c.relname, x.indisvalid FROM pg_index x "
                "JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam "
                "WHERE x.indrelid = 'items'::regclass AND am.amname = 'hnsw' ORDER BY 1"
            ))
        ]


@pytest.mark.slow
@pytest.mark.parametrize("online", [False, True], ids=["plain", "online"])
def test_round_trip_through_autogenerate(
    loaded_project: tuple[Config, Engine, Path], online: bool
) -> None:
    """Add, resize, switch to stored and back, drop; then all the way down. Steps that
    involve only index-only prefixes leave every row version where it was."""
    config, engine, folder = loaded_project
    original = checksum(engine)
    states: list[dict[str, MRLPrefix]] = [prefix_state(engine)]
    for prefix_call, expected_op, writes_rows in STEPS:
        write_models(folder, prefix_call)
        if online:
            migration = online_revision(config, folder, expected_op)
        else:
            migration = revision(config, folder, expected_op)
        assert expected_op in migration and "create_index" not in migration
        versions = row_versions(engine)
        command.upgrade(config, "head")
        check_quietly(config)
        assert checksum(engine) == original
        if not writes_rows:
            assert row_versions(engine) == versions
        state = prefix_state(engine)
        states.append(state)
        if prefix_call:
            assert state["embedding_mrl"].stored == writes_rows
            assert_prefix_values(engine, state["embedding_mrl"])
            assert_search_recall(engine, "embedding_mrl")
        else:
            assert state == {}
        assert all(valid for _, valid in hnsw_indexes(engine))
    for expected in reversed(states[:-1]):
        command.downgrade(config, "-1")
        assert prefix_state(engine) == expected
        assert checksum(engine) == original


class Migrating:
    """Alembic operations on one connection, each in a migration transaction of its own,
    as ``alembic upgrade`` runs them; between them, the connection is free for checks."""

    def __init__(self, conn: Connection) -> None:
        self.context = MigrationContext.configure(conn)
        self.op = Operations(self.context)

    def __call__(self, name: str, *args: object, **kwargs: object) -> None:
        with self.context.begin_transaction():
            getattr(self.op, name)(*args, **kwargs)


@contextmanager
def migrating(engine: Engine) -> Iterator[tuple[Migrating, Connection]]:
    with engine.connect() as conn:
        yield Migrating(conn), conn


@pytest.mark.slow
def test_online_index_only_changes_write_no_row(loaded_project: tuple[Config, Engine, Path]) -> None:
    """The proof, by the table's row versions (place and creating transaction) and by
    PostgreSQL's count of updated rows, with a stored prefix's online add as the control."""
    _, engine, _ = loaded_project
    first = MRLPrefix("embedding_mrl", "embedding", DIMS, 16, stored=False)
    second = MRLPrefix("embedding_mrl", "embedding", DIMS, 24, storage="vector", stored=False)
    stored = MRLPrefix("embedding_stored", "embedding", DIMS, 16)
    with migrating(engine) as (run, conn):
        versions, updated = row_versions(engine), rows_updated(conn)
        run("add_mrl_prefix", "items", first, online=True)
        run("resize_mrl_prefix", "items", first, second, online=True)
        assert_search_recall(engine, "embedding_mrl")
        run("drop_mrl_prefix", "items", second, online=True)
        assert row_versions(engine) == versions
        assert rows_updated(conn) == updated
        run("add_mrl_prefix", "items", stored, online=True)
        assert rows_updated(conn) - updated == ROWS, "the control: a backfill updates every row"
    assert row_versions(engine) != versions


@pytest.mark.slow
def test_an_interrupted_online_build_resumes_or_is_abandoned(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    config, engine, folder = loaded_project
    write_models(folder, INDEX_ONLY_16)
    revision(config, folder, "add")
    command.upgrade(config, "head")
    before = prefix_state(engine)
    write_models(folder, INDEX_ONLY_32)
    online_revision(config, folder, "online resize")
    with interrupted(engine, **INDEX_BUILD_STOP), pytest.raises(Exception, match="canceling"):
        command.upgrade(config, "head")
    assert prefix_state(engine) == before
    assert ("ix_items_embedding_mrl_hnsw_next", False) in hnsw_indexes(engine)
    assert_search_recall(engine, "embedding_mrl")

    with engine.begin() as conn:
        abandon_online_change(conn, "items", "embedding_mrl")
    assert hnsw_indexes(engine) == [("ix_items_embedding_mrl_hnsw", True)]
    assert prefix_state(engine) == before

    with interrupted(engine, **INDEX_BUILD_STOP), pytest.raises(Exception, match="canceling"):
        command.upgrade(config, "head")
    command.upgrade(config, "head")  # the invalid leftover is dropped, the index built again
    assert prefix_state(engine)["embedding_mrl"].dims == 32
    assert hnsw_indexes(engine) == [("ix_items_embedding_mrl_hnsw", True)]
    assert_search_recall(engine, "embedding_mrl")
    check_quietly(config)


@pytest.mark.slow
def test_a_resize_stopped_between_drop_and_rename_resumes(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    """The new index is complete and the old one dropped, but the new one does not have its
    name yet: the next run only renames it."""
    _, engine, _ = loaded_project
    old = MRLPrefix("embedding_mrl", "embedding", DIMS, 16, stored=False)
    new = MRLPrefix("embedding_mrl", "embedding", DIMS, 32, stored=False)
    with migrating(engine) as (run, conn):
        run("add_mrl_prefix", "items", old)
        conn.execute(text(
            "CREATE INDEX ix_items_embedding_mrl_hnsw_next ON items USING hnsw "
            "((CAST(subvector(embedding, 1, 32) AS HALFVEC(32))) halfvec_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        ))
        conn.execute(text("DROP INDEX ix_items_embedding_mrl_hnsw"))
        conn.commit()
        run("resize_mrl_prefix", "items", old, new, online=True)
    assert prefix_state(engine) == {"embedding_mrl": new.__class__(**{
        **new.__dict__, "index_name": "ix_items_embedding_mrl_hnsw"
    })}


@pytest.mark.parametrize(
    ("prefix", "error", "message"),
    [
        (MRLPrefix("p", "embedding", 4096, 2048, storage="vector", stored=False), IndexLimitError,
         "over pgvector's HNSW limit"),
        (MRLPrefix("p", "id", DIMS, 16, stored=False), NotAVectorColumnError,
         "is integer, not vector"),
    ],
)
@pytest.mark.parametrize("online", [False, True], ids=["plain", "online"])
def test_a_bad_index_only_prefix_is_refused_before_any_ddl(
    project: tuple[Config, Engine, Path],
    prefix: MRLPrefix,
    error: type[Exception],
    message: str,
    online: bool,
) -> None:
    _, engine, _ = project
    stored = MRLPrefix("p", "embedding", DIMS, 16)
    with migrating(engine) as (run, _):
        run("add_mrl_prefix", "items", stored)
        with pytest.raises(error, match=message):
            run("resize_mrl_prefix", "items", stored, prefix, online=online)
    assert prefix_state(engine) == {"p": stored.__class__(**{
        **stored.__dict__, "index_name": "ix_items_p_hnsw"
    })}


def test_offline_sql(project: tuple[Config, Engine, Path]) -> None:
    config, _, folder = project
    write_models(folder, INDEX_ONLY_16)
    revision(config, folder, "add")
    command.upgrade(config, "head")
    write_models(folder, INDEX_ONLY_32)
    online_revision(config, folder, "online resize")
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "base:head", sql=True)
    sql = buffer.getvalue()
    assert (
        "CREATE INDEX ix_items_embedding_mrl_hnsw ON items USING hnsw "
        "(CAST(subvector(embedding, 1, 16) AS HALFVEC(16)) halfvec_cosine_ops)" in sql
    )
    assert (
        "CREATE INDEX CONCURRENTLY ix_items_embedding_mrl_hnsw_next ON items USING hnsw "
        "((CAST(subvector(embedding, 1, 32) AS VECTOR(32))) vector_cosine_ops)" in sql
    )
    assert "DROP INDEX CONCURRENTLY IF EXISTS ix_items_embedding_mrl_hnsw" in sql
    assert "ALTER INDEX ix_items_embedding_mrl_hnsw_next RENAME TO ix_items_embedding_mrl_hnsw" in sql
    assert "UPDATE items" not in sql and "ADD COLUMN" not in sql
