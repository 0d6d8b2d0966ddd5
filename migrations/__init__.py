"""The demo app's Alembic project, run by ``mrl-pg demo``.

The package ships this folder as ``mrl_pg.demo_migrations`` (see ``pyproject.toml``), so the
demo finds it in a wheel as in a checkout.
"""
