"""Alembic environment of the demo app."""

from alembic import context
from demo_app import metadata
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import mrl_pg.alembic  # noqa: F401  (op.add_mrl_prefix & co., autogenerate support)
from mrl_pg.tools.server import database_url

url = context.config.attributes.get("url") or database_url()
# A version table of its own, so the demo never reads or writes an app's alembic_version.
VERSION_TABLE = "mrl_pg_demo_version"


def include_name(name: str | None, type_: str, parent_names: dict[str, str | None]) -> bool:
    """Only the demo app's own tables: the database may hold other apps' tables too."""
    return type_ != "table" or name in metadata.tables


if context.is_offline_mode():
    context.configure(
        url=url, target_metadata=metadata, literal_binds=True, version_table=VERSION_TABLE
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(url, poolclass=NullPool)  # each connection closes when released
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
