"""Shared fixtures.  The suite imports the *installed* diskhash (no tests/__init__.py,
so the repository root is not put on sys.path by pytest)."""

from __future__ import annotations

import operator
import os
import shutil
import uuid
from pathlib import Path

import pytest
from spec_model import HEADER, SLOT, file_size, slot_offset

from diskhash import PayloadMeta

DATA = Path(__file__).parent / "data"
FIXTURES = ("empty", "small", "threshold")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run long stress tests")


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    # trylast: the other plugins have made their relative paths (--junitxml,
    # --basetemp, --log-file) absolute against the invocation directory first.
    # Not in an xdist controller (``-n``, on by default): the workers it starts
    # inherit its working directory and resolve the command line's relative
    # test paths against it (``pytest tests/test_format.py`` from the root ran
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


U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def record(key: int, **fields) -> PayloadMeta:
    """The suite's record for ``key`` (an int in ``[0, 2**128)`` or a UUID).

    Every field derives from the key, so a torn record or one read back under
    the wrong key shows; ``fields`` (``offset=``, ``length=``, ``compression=``,
    ``uncompressed_length=``) override them, for an overwrite that differs.
    """
    k = key.int if isinstance(key, uuid.UUID) else operator.index(key)
    values = {"offset": (k * 7) & U64, "length": (k >> 3) & U32,
              "compression": k % 3, "uncompressed_length": (k >> 70) & U32}
    values.update(fields)
    return PayloadMeta(key, **values)


def fill_to_capacity(idx, start: int = 0) -> list[int]:
    """Insert ``record(k)`` for k = start, start+1, ... until the next new key
    must grow the table; returns every key the index then holds from that
    range (the ones present before included).  ``idx`` is a ``DiskHashIndex``
    (for an ``AsyncDiskHashIndex`` pass ``.sync``)."""
    keys = list(range(start, start + idx.capacity - len(idx)))
    for k in keys:
        idx.insert(k, record(k))
    assert len(idx) == idx.capacity
    return keys


def fill_every_slot(path, slots=4096):
    """A table with no empty slot: every slot occupied by a distinct key."""
    data = bytearray(file_size(slots))
    HEADER.pack_into(data, 0, b"SOCHIDX2", 1, bytes(4), slots, slots, 12345, bytes(24))
    for i in range(slots):
        SLOT.pack_into(data, slot_offset(i), 1, 0, 0, 0, 0, 0, (i + 10**9).to_bytes(16, "little"), 0)
    path.write_bytes(bytes(data))


def random_key_array(rng, n: int):
    """``n`` random 128-bit ids as a ``KEY_DTYPE`` array, drawn from the numpy
    Generator ``rng`` (low halves, then high halves)."""
    import numpy as np

    from diskhash import KEY_DTYPE
    keys = np.empty(n, dtype=KEY_DTYPE)
    keys["lo"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    keys["hi"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    return keys
