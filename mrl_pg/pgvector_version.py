"""The oldest pgvector mrl_pg works with, and the check of a database's against it.

Every prefix expression uses functions that pgvector 0.7 added: ``subvector`` (the first
dimensions), ``halfvec`` (the default storage) and ``binary_quantize`` (``bit`` storage). On an
older pgvector they fail inside PostgreSQL with an unknown-function error, so a search and a
migration check the extension's version first (a search once per connection, a migration
before any DDL) and raise :class:`~mrl_pg.errors.PgvectorVersionError` instead. Iterative
index scans, which filtered searches use, came with 0.8; their absence only warns (see
:mod:`mrl_pg.search.hnsw_settings`).
"""

from __future__ import annotations

import re

from mrl_pg.errors import PgvectorVersionError

#: The oldest pgvector whose functions every prefix expression can use.
MINIMUM = (0, 7, 0)
_NUMBERS = re.compile(r"\d+(?:\.\d+)*")


def version_tuple(version: str) -> tuple[int, ...] | None:
    """The numbers of an extension version (``"0.8.0"`` -> ``(0, 8, 0)``), None when it
    starts with none."""
    found = _NUMBERS.match(version.strip())
    return None if found is None else tuple(int(part) for part in found.group().split("."))


def require_minimum(version: str) -> None:
    """Raise :class:`PgvectorVersionError` when ``version`` (``pg_extension.extversion`` of
    ``vector``) is older than :data:`MINIMUM`. A version that does not start with numbers is
    let through: it is not one pgvector released."""
    numbers = version_tuple(version)
    if numbers is not None and numbers < MINIMUM:
        raise PgvectorVersionError(
            f"the database's pgvector is {version}; mrl_pg needs {_dotted(MINIMUM)} or newer"
            " (subvector, halfvec, binary_quantize): upgrade pgvector on the server, then"
            " ALTER EXTENSION vector UPDATE"
        )


def _dotted(numbers: tuple[int, ...]) -> str:
    return ".".join(str(number) for number in numbers)
