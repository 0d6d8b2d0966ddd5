"""The ``mrl-pg`` command's help: every subcommand says what it does, not only its usage."""

from __future__ import annotations

import importlib

import pytest

from mrl_pg.tools.cli import COMMANDS, main


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_help_has_a_description(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    docstring = importlib.import_module(COMMANDS[name]).__doc__
    assert docstring is not None
    first_line = docstring.strip().splitlines()[0]
    assert shown.startswith(f"usage: mrl-pg {name} ")
    assert first_line.replace("``", "") in shown
    assert "``" not in shown
