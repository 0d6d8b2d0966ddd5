"""Alembic support for MRL prefixes; import this module in ``env.py`` to enable it.

It registers ``op.add_mrl_prefix``, ``op.resize_mrl_prefix`` and ``op.drop_mrl_prefix`` and an
autogenerate pass that emits them. With Alembic >= 1.20 the autogenerate pass is also
available as the plugin ``mrl_pg`` (see :mod:`mrl_pg.alembic_plugin`). Add and resize take
``online=True`` for big tables (see :mod:`mrl_pg.alembic.online`);
:func:`abandon_online_change` cleans up after an online change that will not be resumed.
"""

from __future__ import annotations

from mrl_pg.alembic import autogen  # registers the autogenerate pass and renderers
from mrl_pg.alembic.checks import MigrationCheckError
from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.run import abandon_online_change
from mrl_pg.alembic.ops import AddMRLPrefixOp, DropMRLPrefixOp, ResizeMRLPrefixOp

__all__ = [
    "AddMRLPrefixOp",
    "DropMRLPrefixOp",
    "MRLPrefix",
    "MigrationCheckError",
    "ResizeMRLPrefixOp",
    "abandon_online_change",
    "autogen",
]
