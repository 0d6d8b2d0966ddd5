"""The README's Python examples run, in order, against the test database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 5


@pytest.mark.slow
def test_readme_examples_run(schema_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRL_PG_DSN", schema_url)
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in python_blocks():
        exec(compile(block, str(README), "exec", dont_inherit=True), namespace)
    namespace["engine"].dispose()  # type: ignore[attr-defined]
