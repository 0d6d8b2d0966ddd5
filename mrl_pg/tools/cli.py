"""The ``mrl-pg`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mrl_pg.errors import MRLError

#: Subcommand name -> module exposing ``configure(parser)`` and ``run(args) -> int``.
COMMANDS = {
    "abandon-online": "mrl_pg.tools.abandon_online",
    "bench": "mrl_pg.tools.bench",
    "demo": "mrl_pg.tools.demo",
    "evaluate": "mrl_pg.tools.evaluate",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mrl-pg", description="Matryoshka two-stage vector search for PostgreSQL."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or name).strip()
        module.configure(
            commands.add_parser(
                name,
                help=summary.splitlines()[0],
                description=summary.replace("``", ""),
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args))
    except MRLError as exc:
        print(f"mrl-pg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
