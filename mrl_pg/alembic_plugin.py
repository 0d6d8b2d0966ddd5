"""mrl_pg as an Alembic plugin (Alembic >= 1.18): the ``alembic.plugins`` entry point
``mrl_pg``.

Alembic imports every ``alembic.plugins`` entry point while importing itself and calls its
``setup()`` at once, whatever the ``env.py``; the comparators it registers take part only in
the environments that name the plugin::

    context.configure(..., autogenerate_plugins=["alembic.autogenerate.*", "mrl_pg"])

Without that, ``import mrl_pg.alembic`` in ``env.py`` enables the same autogenerate pass for
every environment (see :mod:`mrl_pg.alembic.autogen`); with both, the pass runs once. Either
way, only on PostgreSQL.

Since this module is imported in the middle of Alembic's own import, it imports nothing of
mrl_pg's Alembic support until a comparison runs.
"""

from __future__ import annotations

from typing import Any

#: The dialect the comparators are registered for; other dialects never run them.
DIALECT_NAME = "postgresql"
#: A comparison target only this plugin answers: :mod:`mrl_pg.alembic.autogen` dispatches it
#: to learn whether an environment enabled the plugin.
ENABLED_TARGET = "mrl_pg.plugin_enabled"


def setup(plugin: Any) -> None:
    from alembic.util import DispatchPriority

    plugin.add_autogenerate_comparator(
        _compare_prefixes,
        "autogenerate",
        qualifier=DIALECT_NAME,
        priority=DispatchPriority.LAST,
    )
    plugin.add_autogenerate_comparator(
        _skip_prefix_server_default,
        "column",
        "server_default",
        qualifier=DIALECT_NAME,
        priority=DispatchPriority.FIRST,
    )
    plugin.add_autogenerate_comparator(
        _use_pgvector_rendering,
        "autogenerate",
        qualifier=DIALECT_NAME,
        priority=DispatchPriority.FIRST,
    )
    plugin.add_autogenerate_comparator(_answer_enabled, ENABLED_TARGET, qualifier=DIALECT_NAME)


def _compare_prefixes(autogen_context: Any, upgrade_ops: Any) -> Any:
    from mrl_pg.alembic.autogen import compare_prefixes

    return compare_prefixes(autogen_context, upgrade_ops)


def _skip_prefix_server_default(*args: Any) -> Any:
    from mrl_pg.alembic.autogen import skip_prefix_server_default

    return skip_prefix_server_default(*args)


def _use_pgvector_rendering(*args: Any) -> Any:
    from mrl_pg.alembic.render import use_pgvector_rendering

    return use_pgvector_rendering(*args)


def _answer_enabled(answers: list[bool]) -> Any:
    from alembic.util import PriorityDispatchResult

    answers.append(True)
    return PriorityDispatchResult.CONTINUE
