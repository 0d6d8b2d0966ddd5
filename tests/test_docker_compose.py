"""``docker/compose.yaml``: what the image runs with is PostgreSQL settings that exist and take
the values given, checked against the test database's own catalog; and the fixtures' Docker
path drives it as it should."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import COMPOSE_PROJECT, DOCKER_DIR, compose_database

COMPOSE = (DOCKER_DIR / "compose.yaml").read_text()
SETTINGS = dict(
    re.findall(r"^\s*- (\w+)=(\S+)\s*$", COMPOSE.split("command:", 1)[1].split("healthcheck:")[0], re.M)
)


def test_the_compose_file_runs_pgvector_on_loopback_with_room_for_index_builds() -> None:
    assert re.search(r"^\s*image: pgvector/pgvector:pg1[4-9]$", COMPOSE, re.M)
    assert re.search(r'^\s*- "127\.0\.0\.1:', COMPOSE, re.M)
    assert re.search(r"^\s*shm_size: [1-9]g$", COMPOSE, re.M)
    # over TCP, which the image's temporary initdb server does not listen on
    assert re.search(r'^\s*test: \["CMD-SHELL", "pg_isready -h 127\.0\.0\.1 ', COMPOSE, re.M)
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


STAND_IN_DOCKER = """#!{python}
import json, os, sys
with open(os.environ["STAND_IN_DOCKER_LOG"], "a") as log:
    call = {{"argv": sys.argv[1:], "project": os.environ.get("COMPOSE_PROJECT_NAME"),
             "port": os.environ.get("MRL_PG_PORT")}}
    log.write(json.dumps(call) + "\\n")
if "ps" in sys.argv:
    print(json.dumps({{"ID": "c0ffee", "Name": "db-1", "Service": "db", "State": "running",
        "Health": "healthy", "Publishers": [{{"URL": "127.0.0.1", "TargetPort": 5432,
        "PublishedPort": 54321, "Protocol": "tcp"}}]}}))
"""


def test_the_docker_path_runs_the_compose_file_as_a_project_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fixtures' testcontainers path against a stand-in ``docker`` command that records
    its calls (a real run needs a Docker engine): the compose file is started and waited on
    under a project name of the test run's own, so that tearing it down, volume included,
    leaves alone a database started from the same file; the URL is the published port's."""
    log = tmp_path / "calls.jsonl"
    docker = tmp_path / "docker"
    docker.write_text(STAND_IN_DOCKER.format(python=sys.executable))
    docker.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STAND_IN_DOCKER_LOG", str(log))
    monkeypatch.delenv("DOCKER_HOST", raising=False)

    with compose_database() as url:
        assert url == "postgresql+psycopg://mrl_pg:mrl_pg@127.0.0.1:54321/mrl_pg"

    calls = [json.loads(line) for line in log.read_text().splitlines()]
    commands = [call["argv"] for call in calls]
    assert commands[0] == ["compose", "-f", "compose.yaml", "up", "--wait"]
    assert commands[-1] == ["compose", "-f", "compose.yaml", "down", "--volumes"]
    assert {call["project"] for call in calls} == {f"{COMPOSE_PROJECT}_{os.getpid()}"}
    assert {call["port"] for call in calls} == {""}
    assert "COMPOSE_PROJECT_NAME" not in os.environ
