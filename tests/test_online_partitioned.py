"""Online prefix changes on a partitioned table (two levels of partitions), driven through
Alembic while a writer keeps writing: interrupted, abandoned, resumed, and taken back."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, select, text

from mrl_pg.alembic import abandon_online_change
from mrl_pg.sql import install
from tests.alembic_project import (
    L2_16,
    ROWS,
    VECTORS,
    assert_prefix_values,
    assert_search_recall,
    items_table,
    prefix_state,
    revision,
    write_models,
)
from tests.online_project import (
    PREFIX_16,
    PREFIX_32,
    STAGING,
    Writer,
    check_quietly,
    interrupted,
    on_announcement,
    online_revision,
)

pytest_plugins = ["tests.alembic_project"]

INDEX_ONLY_16 = 'add_prefix_column(items, "embedding", 16, name="embedding_mrl", stored=False)'
INDEX_ONLY_32 = (
    'add_prefix_column(items, "embedding", 32, name="embedding_mrl", storage="vector", '
    "stored=False)"
)

LEAVES = ["items_high_0", "items_high_1", "items_low"]
#: Where ``items_low`` ends and ``items_high`` starts.
SPLIT = ROWS // 3


def interrupted_build(engine: Engine, leaf: str) -> AbstractContextManager[None]:
    """The run is interrupted while it builds ``leaf``'s index, which waits for a transaction
    writing to ``leaf``."""
    return interrupted(
        engine, announcement=f"building {leaf}_embedding_mrl_idx_next",
        statement="CREATE INDEX CONCURRENTLY", lock=f"LOCK TABLE {leaf} IN ROW EXCLUSIVE MODE",
    )


def partition_items(engine: Engine) -> None:
    """Make ``items`` a range-partitioned table whose upper range is hash-partitioned."""
    with engine.begin() as conn:
        for statement in (
            "ALTER TABLE items RENAME TO items_unpartitioned",
            "CREATE TABLE items (id integer PRIMARY KEY, embedding vector(64)) "
            "PARTITION BY RANGE (id)",
            f"CREATE TABLE items_low PARTITION OF items FOR VALUES FROM (MINVALUE) TO ({SPLIT})",
            f"CREATE TABLE items_high PARTITION OF items FOR VALUES FROM ({SPLIT}) TO (MAXVALUE) "
            "PARTITION BY HASH (id)",
            "CREATE TABLE items_high_0 PARTITION OF items_high "
            "FOR VALUES WITH (MODULUS 2, REMAINDER 0)",
            "CREATE TABLE items_high_1 PARTITION OF items_high "
            "FOR VALUES WITH (MODULUS 2, REMAINDER 1)",
            "INSERT INTO items SELECT * FROM items_unpartitioned",
            "DROP TABLE items_unpartitioned",
            "ANALYZE items",
        ):
            conn.execute(text(statement))


def prefix_indexes(engine: Engine) -> list[tuple[str, str, bool]]:
    """(table, index, valid) for every index on a prefix column of the partition tree."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.relid::regclass::text, x.indexrelid::regclass::text, x.indisvalid "
            "FROM pg_partition_tree('items') t JOIN pg_index x ON x.indrelid = t.relid "
            "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] "
            "WHERE a.attname LIKE 'embedding_mrl%' ORDER BY 1, 2"
        )).all()
    return [tuple(row) for row in rows]


@pytest.mark.slow
def test_online_resize_of_a_partitioned_table(loaded_project: tuple[Config, Engine, Path]) -> None:
    config, engine, folder = loaded_project
    partition_items(engine)
    write_models(folder, PREFIX_16)
    # The models do not declare the partitions: autogenerate must not drop them.
    migration = revision(config, folder, "add")
    assert "drop_table" not in migration and "drop_index" not in migration
    command.upgrade(config, "head")
    before, indexes_before = prefix_state(engine), prefix_indexes(engine)
    assert len(indexes_before) == 5 and all(valid for *_, valid in indexes_before)
    write_models(folder, PREFIX_32)
    migration = online_revision(config, folder, "online resize")
    assert "drop_index" not in migration and "drop_table" not in migration
    writer = Writer(config.attributes["url"], config.attributes["options"])
    writer.start()
    try:
        # Stopped while the first leaf's index is built, then abandoned: as it was.
        with interrupted_build(engine, "items_low"), pytest.raises(Exception, match="canceling statement"):
            command.upgrade(config, "head")
        with engine.begin() as conn:
            abandon_online_change(conn, "items", "embedding_mrl")
        assert prefix_state(engine) == before and prefix_indexes(engine) == indexes_before
        # Stopped while the last leaf's index is built, the others built, then resumed.
        with interrupted_build(engine, "items_high_1"), pytest.raises(Exception, match="canceling statement"):
            command.upgrade(config, "head")
        assert prefix_state(engine) == before
        assert_search_recall(engine, "embedding_mrl")
        # Resumed: the writer writes before the backfill and the last leaf's index build.
        with (
            on_announcement("backfilling", lambda: writer.wait_for_writes(20)) as backfills,
            on_announcement("building", lambda: writer.wait_for_writes(20)) as builds,
        ):
            command.upgrade(config, "head")
    finally:
        writer.stop.set()
        writer.join()
    assert writer.errors == [] and len(backfills) == 1
    assert builds == ["building items_high_1_embedding_mrl_idx_next concurrently"]
    after = prefix_state(engine)["embedding_mrl"]
    assert after.dims == 32 and after.storage == "vector"
    assert_prefix_values(engine, after)
    assert_search_recall(engine, "embedding_mrl")
    assert prefix_indexes(engine) == [
        ("items", "ix_items_embedding_mrl_hnsw", True),
        ("items_high", "items_high_embedding_mrl_idx", True),
        *((leaf, f"{leaf}_embedding_mrl_idx", True) for leaf in LEAVES),
    ]
    with engine.connect() as conn:
        stored = {row.id: row.embedding for row in conn.execute(select(items_table()))}
        staging = conn.execute(text(
            "SELECT count(*) FROM pg_attribute WHERE attname = :c"
            " AND attrelid IN (SELECT relid FROM pg_partition_tree('items'))"
        ), {"c": STAGING}).scalar_one()
    with engine.begin() as conn:
        install(conn)
    assert_search_recall(engine, "embedding_mrl", sql_function=True)
    expected = {i: VECTORS[i] for i in range(ROWS)} | writer.expected
    assert stored.keys() == expected.keys() and staging == 0
    assert all(np.array_equal(np.float32(stored[i]), expected[i]) for i in expected)
    check_quietly(config)

    # A table attached later gets the trigger, which fills its prefixes as docs/ say.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE items_high DETACH PARTITION items_high_1"))
        conn.execute(text("UPDATE items_high_1 SET embedding_mrl = NULL"))
        conn.execute(text(
            "ALTER TABLE items_high ATTACH PARTITION items_high_1 "
            "FOR VALUES WITH (MODULUS 2, REMAINDER 1)"
        ))
        conn.execute(text("UPDATE items_high_1 SET embedding = embedding WHERE embedding_mrl IS NULL"))
    assert_prefix_values(engine, after)

    command.downgrade(config, "-1")
    assert prefix_state(engine) == before and prefix_indexes(engine) == indexes_before
    assert_prefix_values(engine, before["embedding_mrl"])


@pytest.mark.slow
def test_online_index_only_change_of_a_partitioned_table(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    config, engine, folder = loaded_project
    partition_items(engine)
    write_models(folder, PREFIX_16)
    revision(config, folder, "add")
    command.upgrade(config, "head")
    indexes_before = prefix_indexes(engine)
    fingerprint = text(
        "SELECT md5(string_agg(tableoid::text || ctid::text || xmin::text, ',' ORDER BY id))"
        " FROM items"
    )
    with engine.connect() as conn:
        versions = conn.execute(fingerprint).scalar_one()
    write_models(folder, L2_16)
    online_revision(config, folder, "online, index only")
    command.upgrade(config, "head")
    after = prefix_state(engine)["embedding_mrl"]
    assert (after.distance, after.m) == ("l2", 8)
    assert prefix_indexes(engine) == indexes_before  # same names, new definitions, all valid
    with engine.connect() as conn:
        assert conn.execute(fingerprint).scalar_one() == versions
        definitions = conn.execute(text(
            "SELECT count(*) FROM pg_indexes WHERE indexdef LIKE '%embedding_mrl halfvec_l2_ops%'"
            " AND indexdef LIKE '%m=''8''%'"
        )).scalar_one()
    assert definitions == 5
    assert_search_recall(engine, "embedding_mrl")


def hnsw_indexes_of_tree(engine: Engine) -> list[tuple[str, str, bool]]:
    """(table, index, valid) for every HNSW index of the partition tree."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT t.relid::regclass::text, x.indexrelid::regclass::text, x.indisvalid "
            "FROM pg_partition_tree('items') t JOIN pg_index x ON x.indrelid = t.relid "
            "JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam "
            "WHERE am.amname = 'hnsw' ORDER BY 1, 2"
        )).all()
    return [tuple(row) for row in rows]


@pytest.mark.slow
def test_index_only_prefix_of_a_partitioned_table(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    """Plain add, then an online resize built leaf by leaf and attached, interrupted and
    resumed; no row version is written; and back down."""
    config, engine, folder = loaded_project
    partition_items(engine)
    fingerprint = text(
        "SELECT md5(string_agg(tableoid::text || ctid::text || xmin::text, ',' ORDER BY id))"
        " FROM items"
    )
    with engine.connect() as conn:
        versions = conn.execute(fingerprint).scalar_one()
    write_models(folder, INDEX_ONLY_16)
    assert "drop_table" not in revision(config, folder, "add")
    command.upgrade(config, "head")
    before = prefix_state(engine)
    assert not before["embedding_mrl"].stored and len(hnsw_indexes_of_tree(engine)) == 5
    write_models(folder, INDEX_ONLY_32)
    online_revision(config, folder, "online resize")
    with interrupted_build(engine, "items_high_1"), pytest.raises(Exception, match="canceling"):
        command.upgrade(config, "head")
    assert prefix_state(engine) == before
    command.upgrade(config, "head")
    after = prefix_state(engine)["embedding_mrl"]
    assert (after.dims, after.stored) == (32, False)
    indexes = hnsw_indexes_of_tree(engine)
    assert len(indexes) == 5 and all(valid for *_, valid in indexes), indexes
    assert ("items_low", "items_low_embedding_mrl_idx", True) in indexes
    with engine.connect() as conn:
        assert conn.execute(fingerprint).scalar_one() == versions
    assert_search_recall(engine, "embedding_mrl")
    check_quietly(config)
    command.downgrade(config, "-1")
    assert prefix_state(engine) == before
    assert len(hnsw_indexes_of_tree(engine)) == 5
