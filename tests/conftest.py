"""Shared fixtures.  The suite imports the *installed* diskhash (no tests/__init__.py,
so the repository root is not put on sys.path by pytest)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FIXTURES = ("empty", "small", "threshold")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long stress tests")


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


def load_tsv(name: str) -> dict[int, tuple[int, int, int, int, int]]:
    """The entries a fixture holds, as key -> (key, offset, length, compression, ulen)."""
    rows = {}
    text = (DATA / f"{name}.tsv").read_text()
    for line in text.splitlines():
        key, offset, length, comp, ulen = (int(x) for x in line.split("\t"))
        rows[key] = (key, offset, length, comp, ulen)
    return rows


@pytest.fixture
def fixture_copy(tmp_path: Path):
    """Copy a Rust-written fixture into tmp_path (writable) and return its path."""

    def copy(name: str) -> Path:
        dst = tmp_path / f"{name}.idx"
        shutil.copyfile(DATA / f"{name}.idx", dst)
        os.chmod(dst, 0o644)
        return dst

    return copy


def subprocess_env() -> dict[str, str]:
    """Environment for child Pythons: import the same diskhash this suite imports.

    (Run with the repository as the working directory, ``python -m`` would
    otherwise pick up the uncompiled source tree.)
    """
    import diskhash

    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(diskhash.__file__).resolve().parent.parent)
    return env


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


def fill_every_slot(path, slots=4096):
    """A table with no empty slot: every slot occupied by a distinct key."""
    data = bytearray(64 + slots * 40)
    data[:64] = struct.pack("<8sI4xQQQ24x", b"SOCHIDX2", 1, slots, slots, 12345)
    for i in range(slots):
        off = 64 + i * 40
        data[off] = 1
        data[off + 16: off + 32] = (i + 10**9).to_bytes(16, "little")
    path.write_bytes(bytes(data))
