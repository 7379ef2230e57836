"""Shared fixtures and the suite's hooks (``--run-slow``, the working directory).

The suite imports the *installed* diskhash: pytest imports the test files with
``--import-mode=importlib`` and puts only ``tests/`` on ``sys.path``
(``pythonpath`` in pyproject.toml), for ``helpers``; never the repository root.
Plain helper functions live in ``tests/helpers/``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from helpers.data import DATA
from helpers.records import record

from diskhash import DiskHashIndex


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long stress tests")


def _children_keep_their_bytecode() -> None:
    """With ``PYTHONDONTWRITEBYTECODE`` set, every child Python the suite starts
    (hundreds: ``python -m diskhash``, crash children, servers, pytest in
    pytest) compiled the uncompiled sources it imports again, diskhash's
    first: a tenth of a second each.  The children write their bytecode
    under a prefix outside the source tree instead (``PYTHONPYCACHEPREFIX``,
    kept between runs), so the tree stays as free of ``.pyc`` files as the
    variable asked.  A prefix the user set is kept."""
    if not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        return
    del os.environ["PYTHONDONTWRITEBYTECODE"]
    os.environ.setdefault("PYTHONPYCACHEPREFIX",
                          str(Path(tempfile.gettempdir()) / f"diskhash-tests-pycache-{os.getuid()}"))


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    _children_keep_their_bytecode()
    # trylast: the other plugins have made their relative paths (--junitxml,
    # --basetemp, --log-file) absolute against the invocation directory first.
    # Not in an xdist controller (``-n``, on by default): the workers it starts
    # inherit its working directory and resolve the command line's relative
    # test paths against it (``pytest tests/format/test_sochidx2.py`` from the root ran
    # no tests); it runs no tests itself, and each worker moves here in turn.
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return
    # The child Pythons the suite starts (``python -c ...``, ``python -m
    # diskhash``) put their working directory first on sys.path.  Run from the
    # repository root (the README's ``pytest``), that is the source folder
    # diskhash/, whose extensions a regular install does not build there: the
    # children would import it and fail.  This directory holds no such folder.
    os.chdir(Path(__file__).parent)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="long stress test: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    return tmp_path / "edges.idx"


@pytest.fixture
def small_index(tmp_path: Path) -> Path:
    """An index of 100 records (``record(0)`` to ``record(99)``), closed."""
    path = tmp_path / "x.idx"
    with DiskHashIndex(path) as idx:
        for k in range(100):
            idx.insert(k, record(k))
    return path


@pytest.fixture
def fixture_copy(tmp_path: Path):
    """Copy a Rust-written fixture into tmp_path (writable) and return its path."""

    def copy(name: str) -> Path:
        dst = tmp_path / f"{name}.idx"
        shutil.copyfile(DATA / f"{name}.idx", dst)
        os.chmod(dst, 0o644)
        return dst

    return copy


def _anyio_backends() -> list:
    backends = [pytest.param("asyncio", id="asyncio")]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        pass
    else:
        backends.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))
    backends.append(pytest.param("trio", id="trio"))
    return backends


@pytest.fixture(params=_anyio_backends())
def anyio_backend(request: pytest.FixtureRequest):
    """Every ``@pytest.mark.anyio`` test runs on asyncio, uvloop (if installed) and trio."""
    return request.param
