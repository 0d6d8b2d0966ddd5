"""Online prefix changes, driven through Alembic: a writer keeps writing, nothing is lost, an
interrupted change resumes or is abandoned, and the table stays usable throughout."""

from __future__ import annotations

import importlib.util
import io
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, select, text

from mrl_pg.alembic import AddMRLPrefixOp, MigrationCheckError, MRLPrefix, abandon_online_change
from mrl_pg.tools.cli import main
from tests.alembic_project import (
    DIMS,
    L2_16,
    ROWS,
    VECTORS,
    assert_prefix_values,
    assert_search_recall,
    checksum,
    items_table,
    prefix_state,
    revision,
    row_versions,
    write_models,
)
from tests.online_project import (
    PATIENCE,
    PREFIX_16,
    PREFIX_32,
    STAGING,
    Writer,
    check_quietly,
    interrupted,
    on_announcement,
    online_revision,
    upgrade_to_plain_16,
)
from tests.own_schema import own_tables_only

pytest_plugins = ["tests.alembic_project"]

BACKFILL = "DO $mrl$\nDECLARE\n    part regclass"  # how the backfill statement starts
#: Interrupting a backfill: a row half-way through the table stays locked.
BACKFILL_STOP = dict(
    announcement="backfilling", statement=BACKFILL,
    lock=f"SELECT FROM items WHERE id = {ROWS // 2} FOR UPDATE",
)
#: Interrupting an index build: the build waits for a transaction writing to the table.
INDEX_BUILD_STOP = dict(
    announcement="building", statement="CREATE INDEX CONCURRENTLY",
    lock="LOCK TABLE items IN ROW EXCLUSIVE MODE",
)


def pending_upgrade(engine: Engine, folder: Path) -> str:
    """What autogenerate would write now, even with the database short of head."""
    spec = importlib.util.spec_from_file_location("pending_models", folder / "models.py")
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_name": own_tables_only(conn)})
        script = produce_migrations(context, models.metadata)
    assert script.upgrade_ops is not None
    return render_python_code(script.upgrade_ops)


BIT_48 = (
    'add_prefix_column(items, "embedding", 48, name="embedding_mrl", storage="bit", '
    'distance="inner_product")'
)


def columns_of(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text(
            "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute "
            "WHERE attrelid = 'items'::regclass AND attnum > 0 AND NOT attisdropped"
        )).scalar_one())


def user_triggers(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass AND NOT tgisinternal"
        )).scalar_one())


@pytest.mark.slow
def test_online_and_plain_changes_round_trip(loaded_project: tuple[Config, Engine, Path]) -> None:
    """Online add, online resize to a bit prefix, then a plain resize of the prefix the online
    change made; and all the way back down."""
    config, engine, folder = loaded_project
    original = checksum(engine)
    states = [prefix_state(engine)]
    for prefix_call, online in ((PREFIX_16, True), (BIT_48, True), (PREFIX_32, False)):
        write_models(folder, prefix_call)
        if online:
            assert "online=True" in online_revision(config, folder, "online")
        else:
            assert "op.resize_mrl_prefix(" in revision(config, folder, "plain")
        command.upgrade(config, "head")
        check_quietly(config)
        state = prefix_state(engine)
        assert_prefix_values(engine, state["embedding_mrl"])
        assert_search_recall(engine, "embedding_mrl")
        assert checksum(engine) == original
        assert user_triggers(engine) == (1 if online else 0)
        states.append(state)
    for expected in reversed(states[:-1]):
        command.downgrade(config, "-1")
        assert prefix_state(engine) == expected
        for prefix in expected.values():
            assert_prefix_values(engine, prefix)
        assert checksum(engine) == original
    assert user_triggers(engine) == 0


@pytest.mark.slow
def test_online_resize_with_a_concurrent_writer(loaded_project: tuple[Config, Engine, Path]) -> None:
    """Rows written while the change runs all end up with their prefix: before its backfill
    and before its index build, the run waits until the writer has written 50 more rows."""
    config, engine, folder = loaded_project
    upgrade_to_plain_16(config, folder)
    env = (folder / "env.py").read_text().replace(
        "include_object=include_object)",
        'include_object=include_object,\n'
        '                          mrl_pg_online=lambda table: table.name == "items")',
    )
    (folder / "env.py").write_text(env)
    write_models(folder, PREFIX_32)
    assert "online=True)" in revision(config, folder, "online resize, as env.py asks")
    writer = Writer(config.attributes["url"], config.attributes["options"])
    writer.start()
    try:
        writer.wait_for_writes(20)
        with (
            on_announcement("backfilling", lambda: writer.wait_for_writes(50)) as backfills,
            on_announcement("building", lambda: writer.wait_for_writes(50)) as builds,
        ):
            command.upgrade(config, "head")
    finally:
        writer.stop.set()
        writer.join()
    assert writer.errors == [] and len(backfills) == len(builds) == 1
    prefix = prefix_state(engine)["embedding_mrl"]
    assert prefix.dims == 32
    assert_prefix_values(engine, prefix)
    table = items_table()
    with engine.connect() as conn:
        stored = {row.id: row.embedding for row in conn.execute(select(table))}
    expected = {i: VECTORS[i] for i in range(ROWS)} | writer.expected
    assert stored.keys() == expected.keys()
    assert all(np.array_equal(np.float32(stored[i]), expected[i]) for i in expected)


def assert_usable(engine: Engine, prefix: MRLPrefix) -> None:
    """Searches answer from the current prefix, and new rows get theirs."""
    assert_search_recall(engine, prefix.column)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO items (id, embedding) VALUES (-1, :v)"),
                     {"v": str(VECTORS[3].tolist())})
    assert_prefix_values(engine, prefix)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM items WHERE id = -1"))


@pytest.mark.slow
@pytest.mark.parametrize("stop", [BACKFILL_STOP, INDEX_BUILD_STOP], ids=["backfill", "index build"])
def test_an_interrupted_online_change_resumes(
    loaded_project: tuple[Config, Engine, Path], stop: dict[str, str]
) -> None:
    config, engine, folder = loaded_project
    upgrade_to_plain_16(config, folder)
    before = prefix_state(engine)
    write_models(folder, PREFIX_32)
    online_revision(config, folder, "online resize")
    with interrupted(engine, **stop), pytest.raises(Exception, match="canceling statement"):
        command.upgrade(config, "head")
    if stop is BACKFILL_STOP:
        with engine.connect() as conn:
            filled = conn.execute(text(f"SELECT count({STAGING}) FROM items")).scalar_one()
        assert 0 < filled < ROWS, "stopped half-way, after some batches"
    assert prefix_state(engine) == before
    assert_usable(engine, before["embedding_mrl"])
    pending = pending_upgrade(engine, folder)
    assert "op.resize_mrl_prefix(" in pending and STAGING not in pending
    command.upgrade(config, "head")
    after = prefix_state(engine)["embedding_mrl"]
    assert after.dims == 32
    assert_prefix_values(engine, after)
    assert_search_recall(engine, "embedding_mrl")
    with engine.connect() as conn:
        invalid = conn.execute(text(
            "SELECT count(*) FROM pg_index WHERE indrelid = 'items'::regclass AND NOT indisvalid"
        )).scalar_one()
    assert invalid == 0
    check_quietly(config)


@pytest.mark.slow
def test_an_interrupted_online_change_can_be_abandoned(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    config, engine, folder = loaded_project
    upgrade_to_plain_16(config, folder)
    before, original = prefix_state(engine), checksum(engine)
    write_models(folder, PREFIX_32)
    online_revision(config, folder, "online resize")
    with interrupted(engine, **BACKFILL_STOP), pytest.raises(Exception, match="canceling statement"):
        command.upgrade(config, "head")
    with engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    url = config.attributes["url"]
    assert main(["abandon-online", "items", "embedding_mrl", "--schema", schema, "--dsn", url]) == 0
    assert columns_of(engine) == ["id", "embedding", "embedding_mrl"]
    assert user_triggers(engine) == 0
    assert prefix_state(engine) == before and checksum(engine) == original
    assert_usable(engine, before["embedding_mrl"])


def test_a_change_the_staging_column_was_built_for_is_started_over(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    """A staging column left by an interrupted change to 8 dims is rebuilt for 32."""
    from mrl_pg.alembic.online.change import OnlineChange
    from mrl_pg.sqltext import TableRef

    config, engine, folder = loaded_project
    upgrade_to_plain_16(config, folder)
    old = prefix_state(engine)["embedding_mrl"]
    other = MRLPrefix("embedding_mrl", "embedding", DIMS, 8)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(OnlineChange(TableRef("items"), other, old).prepare_sql()))
    write_models(folder, PREFIX_32)
    online_revision(config, folder, "online resize")
    command.upgrade(config, "head")
    assert_prefix_values(engine, prefix_state(engine)["embedding_mrl"])


def test_online_offline_sql(project: tuple[Config, Engine, Path]) -> None:
    config, _, folder = project
    write_models(folder, PREFIX_16)
    online_revision(config, folder, "add online")
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "base:head", sql=True)
    sql = buffer.getvalue()
    commit, index = sql.index("COMMIT;"), sql.index("CREATE INDEX CONCURRENTLY ix_items_embedding_mrl_hnsw_next")
    assert commit < sql.index("DO $mrl$") < index < sql.index("RENAME TO ix_items_embedding_mrl_hnsw")
    assert "CREATE OR REPLACE TRIGGER mrl_pg_embedding_mrl" in sql


@pytest.mark.parametrize("batch_size", [0, -5, 2.5, True])
def test_a_bad_batch_size_is_refused(batch_size: object) -> None:
    prefix = MRLPrefix("embedding_mrl", "embedding", DIMS, 16)
    with pytest.raises(MigrationCheckError, match="batch_size must be a positive integer"):
        AddMRLPrefixOp("items", prefix, online=True, batch_size=batch_size)


def test_the_index_build_logs_its_progress(
    project: tuple[Config, Engine, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An index-only change (no step before the build takes a lock) whose build waits for a
    transaction of the test's until its progress report says that it waits."""
    config, engine, folder = project
    monkeypatch.setattr("mrl_pg.alembic.progress.PROGRESS_INTERVAL", 0.05)
    upgrade_to_plain_16(config, folder)
    write_models(folder, L2_16)
    online_revision(config, folder, "index only, online")
    report = "mrl_pg: building ix_items_embedding_mrl_hnsw_next: waiting for writers before build"
    seen = threading.Event()
    with engine.connect() as writer, on_announcement(report, seen.set) as reports:
        writer.execute(text("LOCK TABLE items IN ROW EXCLUSIVE MODE"))
        upgrade = threading.Thread(target=command.upgrade, args=(config, "head"))
        upgrade.start()
        reported = seen.wait(PATIENCE)
        writer.rollback()
        upgrade.join()
    assert reported and reports[0] == report
    assert prefix_state(engine)["embedding_mrl"].distance == "l2"


@pytest.mark.parametrize(
    ("counts", "report"),
    [
        ((1_234, 5_000, 0, 0), "building index: loading tuples, 1,234 of 5,000 blocks (24%)"),
        ((0, 0, 50, 200), "building index: loading tuples, 50 of 200 tuples (25%)"),
        ((0, 0, 0, 0), "building index: loading tuples"),
    ],
)
def test_a_progress_report_counts_what_the_build_counts(
    counts: tuple[int, int, int, int], report: str
) -> None:
    from mrl_pg.alembic.progress import describe

    row = SimpleNamespace(phase="building index: loading tuples", **dict(zip(
        ("blocks_done", "blocks_total", "tuples_done", "tuples_total"), counts, strict=True
    )))
    assert describe(row) == report


def test_a_staging_index_name_in_use_is_refused_before_any_ddl(
    project: tuple[Config, Engine, Path],
) -> None:
    config, engine, folder = project
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_items_embedding_mrl_hnsw_next ON items (id)"))
    write_models(folder, PREFIX_16)
    online_revision(config, folder, "add online")
    with pytest.raises(MigrationCheckError, match="'ix_items_embedding_mrl_hnsw_next' already exists"):
        command.upgrade(config, "head")
    assert columns_of(engine) == ["id", "embedding"] and user_triggers(engine) == 0


@pytest.mark.slow
def test_an_online_index_only_change_builds_no_column(
    loaded_project: tuple[Config, Engine, Path],
) -> None:
    """Distance and HNSW parameters change, the column does not: no staging column, no
    backfill, one concurrent index build; interrupted, abandoned, run again."""
    config, engine, folder = loaded_project
    upgrade_to_plain_16(config, folder)
    before, versions = prefix_state(engine), row_versions(engine)
    write_models(folder, L2_16)
    online_revision(config, folder, "online, index only")
    with interrupted(engine, **INDEX_BUILD_STOP), pytest.raises(Exception, match="canceling statement"):
        command.upgrade(config, "head")
    assert prefix_state(engine) == before
    with engine.begin() as conn:
        abandon_online_change(conn, "items", "embedding_mrl")
        indexes = conn.execute(text(
            "SELECT array_agg(indexrelid::regclass::text ORDER BY 1) FROM pg_index"
            " WHERE indrelid = 'items'::regclass"
        )).scalar_one()
    assert sorted(indexes) == ["items_pkey", "ix_items_embedding_mrl_hnsw"]
    command.upgrade(config, "head")
    after = prefix_state(engine)["embedding_mrl"]
    assert (after.distance, after.m, after.ef_construction) == ("l2", 8, 32)
    assert row_versions(engine) == versions and columns_of(engine) == ["id", "embedding", "embedding_mrl"]
    assert_prefix_values(engine, after)
    assert_search_recall(engine, "embedding_mrl")
    check_quietly(config)
    command.downgrade(config, "-1")
    assert prefix_state(engine) == before and row_versions(engine) == versions
