"""The demo command and the demo app's migrations."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from mrl_pg.tools.cli import main
from mrl_pg.tools.demo import MIGRATIONS


@pytest.mark.slow
def test_demo_runs_through_its_migrations(
    schema_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MRL_PG_DSN", schema_url)
    assert main(["demo", "--rows", "3000", "--queries", "10"]) == 0
    out = capsys.readouterr().out
    assert "1. alembic upgrade 0001: app table mrl_pg_demo_items, loaded 3000 rows" in out
    assert "2. alembic upgrade 0002: added a 256-dim halfvec prefix" in out
    assert "3. alembic upgrade head: shrank the prefix to 128 dims" in out
    assert out.count("     id=") == 5
    assert "mrl_search     recall@10=" in out and "full-dim HNSW  recall@10=" in out
    engine = create_engine(schema_url)
    with engine.connect() as conn:
        left = conn.execute(
            text("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
        ).scalar_one()
    engine.dispose()
    assert left == 0, "the demo cleans up after itself"


def test_demo_migrations_match_the_demo_models(schema_url: str) -> None:
    config = Config(str(MIGRATIONS / "alembic.ini"))
    config.attributes["url"] = schema_url
    command.upgrade(config, "head")
    command.check(config)  # demo_app.py and the head revision agree
    command.downgrade(config, "base")
