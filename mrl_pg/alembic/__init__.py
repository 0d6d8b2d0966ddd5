"""Alembic support for MRL prefixes; ``import mrl_pg.alembic`` in ``env.py`` to enable it.

Importing this package registers ``op.add_mrl_prefix``, ``op.resize_mrl_prefix`` and
``op.drop_mrl_prefix`` (:mod:`mrl_pg.alembic.ops`) and, through
:func:`mrl_pg.alembic.autogen.register`, the autogenerate pass that emits them and the
renderers that write them into migration files. The same pass is also the Alembic plugin
``mrl_pg`` (see :mod:`mrl_pg.alembic_plugin`); enabling it both ways is harmless. Add and
resize take ``online=True`` for big tables (see :mod:`mrl_pg.alembic.online`);
:func:`abandon_online_change` cleans up after an online change that will not be resumed.
"""

from __future__ import annotations

from mrl_pg.alembic import autogen
from mrl_pg.alembic.checks import MigrationCheckError
from mrl_pg.alembic.citus import DistributedTableError
from mrl_pg.alembic.migration_prefix import MRLPrefix
from mrl_pg.alembic.online.run import abandon_online_change
from mrl_pg.alembic.ops import AddMRLPrefixOp, DropMRLPrefixOp, ResizeMRLPrefixOp
from mrl_pg.alembic.pooler import PoolerError

autogen.register()

__all__ = [
    "AddMRLPrefixOp",
    "DistributedTableError",
    "DropMRLPrefixOp",
    "MRLPrefix",
    "MigrationCheckError",
    "PoolerError",
    "ResizeMRLPrefixOp",
    "abandon_online_change",
]
