"""The README's Python examples run, in order, against the test database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from tests.conftest import schema_engine

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 5


def test_readme_examples_run(
    database_url: str, server_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    with schema_engine(database_url, server_engine) as engine:
        url = make_url(database_url).update_query_dict({"options": _options(engine)})
        monkeypatch.setenv("MRL_PG_DSN", url.render_as_string(hide_password=False))
        namespace: dict[str, object] = {"__name__": "readme"}
        for block in python_blocks():
            exec(compile(block, str(README), "exec", dont_inherit=True), namespace)
        namespace["engine"].dispose()  # type: ignore[attr-defined]


def _options(engine: Engine) -> str:
    with engine.connect() as conn:
        schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    return f"-c search_path={schema},public"
