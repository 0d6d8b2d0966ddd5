"""``docker/compose.yaml``: what the image runs with is PostgreSQL settings that exist and take
the values given, checked against the test database's own catalog."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import Engine, text

from tests.conftest import DOCKER_DIR

COMPOSE = (DOCKER_DIR / "compose.yaml").read_text()
SETTINGS = dict(
    re.findall(r"^\s*- (\w+)=(\S+)\s*$", COMPOSE.split("command:", 1)[1].split("healthcheck:")[0], re.M)
)


def test_the_compose_file_runs_pgvector_on_loopback_with_room_for_index_builds() -> None:
    assert re.search(r"^\s*image: pgvector/pgvector:pg1[4-9]$", COMPOSE, re.M)
    assert re.search(r'^\s*- "127\.0\.0\.1:', COMPOSE, re.M)
    assert re.search(r"^\s*shm_size: [1-9]g$", COMPOSE, re.M)
    assert {"maintenance_work_mem", "max_parallel_maintenance_workers", "shared_buffers"} <= set(
        SETTINGS
    )


@pytest.mark.parametrize(("name", "value"), sorted(SETTINGS.items()))
def test_each_setting_is_one_postgres_takes(server_engine: Engine, name: str, value: str) -> None:
    with server_engine.connect() as conn:
        row = conn.execute(
            text("SELECT context, unit, min_val, max_val FROM pg_settings WHERE name = :n"),
            {"n": name},
        ).first()
        assert row is not None, f"PostgreSQL has no setting {name!r}"
        if row.context in ("user", "superuser"):
            conn.execute(text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
        else:  # set at server start only: check the size is within the setting's range
            within = conn.execute(
                text(
                    "SELECT pg_size_bytes(:v) BETWEEN CAST(:lo AS bigint) * pg_size_bytes(:u)"
                    " AND CAST(:hi AS bigint) * pg_size_bytes(:u)"
                ),
                {"v": value, "lo": row.min_val, "hi": row.max_val, "u": row.unit},
            ).scalar_one()
            assert within, f"{name}={value} is outside {row.min_val}..{row.max_val} {row.unit}"
