"""The embedded server and database URLs; this import path is kept for existing code, the
module is :mod:`mrl_pg.tools.server`."""

from mrl_pg.tools.server import (
    create_vector_extension,
    database_url,
    embedded_url,
    scratch_schema,
    sqlalchemy_url,
)

__all__ = [
    "create_vector_extension",
    "database_url",
    "embedded_url",
    "scratch_schema",
    "sqlalchemy_url",
]
