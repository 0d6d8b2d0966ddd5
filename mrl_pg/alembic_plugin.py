"""mrl_pg as an Alembic (>= 1.20) plugin, the ``alembic.plugins`` entry point ``mrl_pg``.

Alembic loads it while importing itself, so it imports nothing of Alembic's autogenerate
machinery up front. Enable it in ``env.py`` with
``context.configure(..., autogenerate_plugins=["alembic.autogenerate.*", "mrl_pg"])``;
``import mrl_pg.alembic`` in ``env.py`` works on every supported Alembic version instead.
"""

from __future__ import annotations

from typing import Any


def setup(plugin: Any) -> None:
    from alembic.util import DispatchPriority

    plugin.add_autogenerate_comparator(
        _compare_prefixes, "autogenerate", priority=DispatchPriority.LAST
    )
    plugin.add_autogenerate_comparator(
        _skip_prefix_server_default,
        "column",
        "server_default",
        priority=DispatchPriority.FIRST,
    )
    plugin.add_autogenerate_comparator(
        _use_pgvector_rendering, "autogenerate", priority=DispatchPriority.FIRST
    )


def _compare_prefixes(autogen_context: Any, upgrade_ops: Any) -> Any:
    from mrl_pg.alembic.autogen import compare_prefixes

    return compare_prefixes(autogen_context, upgrade_ops)


def _skip_prefix_server_default(*args: Any) -> Any:
    from mrl_pg.alembic.autogen import skip_prefix_server_default

    return skip_prefix_server_default(*args)


def _use_pgvector_rendering(*args: Any) -> Any:
    from mrl_pg.alembic.render import use_pgvector_rendering

    return use_pgvector_rendering(*args)
