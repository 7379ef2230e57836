"""``resident=``: the table map kept in memory (mlock, else MADV_WILLNEED), within a budget."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from diskhash import DiskHashIndex, PayloadMeta, PayloadStore

ROOT = os.geteuid() == 0


def locked_kib(path: str) -> int:
    """kB of this process's maps of ``path`` that are mlocked (/proc/self/smaps)."""
    path = os.path.realpath(path)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                inside = len(head) >= 6 and head[5] == path
            elif inside and head[0] == "Locked:":
                total += int(head[1])
    return total


def fill(idx: DiskHashIndex, n: int) -> None:
    for k in range(1, n + 1):
        idx.insert(k, PayloadMeta(k, 1, 1, 0, 1))


@pytest.mark.parametrize("bad", ["yes", 1.5, b"1", [1]])
def test_resident_wrong_type_is_typeerror(tmp_path, bad):
    with pytest.raises(TypeError, match="resident must be None, a bool or a budget"):
        DiskHashIndex(tmp_path / "i.dh", resident=bad)
    assert not os.path.exists(tmp_path / "i.dh")


@pytest.mark.parametrize("bad", [0, -1, -(1 << 70)])
def test_resident_budget_below_one_byte_is_valueerror(tmp_path, bad):
    with pytest.raises(ValueError, match="resident must be a budget of at least 1 byte"):
        DiskHashIndex(tmp_path / "i.dh", resident=bad)
    with DiskHashIndex(tmp_path / "j.dh") as idx:
        with pytest.raises(ValueError, match="resident must be a budget"):
            idx.set_resident(bad)
        with pytest.raises(TypeError, match="resident must be None"):
            idx.set_resident("all")
        assert idx.resident is None


def test_off_by_default(tmp_path):
    with DiskHashIndex(tmp_path / "i.dh") as idx:
        assert idx.resident is None
        assert locked_kib(idx.path) == 0


@pytest.mark.skipif(not ROOT, reason="mlock of a whole table needs CAP_IPC_LOCK or a big RLIMIT_MEMLOCK")
def test_locked_and_survives_a_grow(tmp_path):
    with DiskHashIndex(tmp_path / "i.dh", resident=True) as idx:
        assert idx.resident == "locked"
        first = os.path.getsize(idx.path)
        assert locked_kib(idx.path) * 1024 >= first
        fill(idx, 20_000)                       # several grows
        size = os.path.getsize(idx.path)
        assert size > 4 * first
        assert idx.resident == "locked"
        assert locked_kib(idx.path) * 1024 >= size
        assert idx.get(19_999) == PayloadMeta(19_999, 1, 1, 0, 1)
        idx.set_resident(None)
        assert idx.resident is None
        assert locked_kib(idx.path) == 0
        idx.set_resident(size)                  # exactly the file's size fits
        assert idx.resident == "locked"
    assert idx.resident is None


@pytest.mark.skipif(not ROOT, reason="mlock of a whole table needs CAP_IPC_LOCK or a big RLIMIT_MEMLOCK")
def test_over_budget_is_not_locked(tmp_path):
    with DiskHashIndex(tmp_path / "i.dh", resident=True) as idx:
        fill(idx, 1000)
        size = os.path.getsize(idx.path)
        idx.set_resident(size - 1)
        assert idx.resident is None
        assert locked_kib(idx.path) == 0
    # A budget the table outgrows: locked until the grow, not after.
    with DiskHashIndex(tmp_path / "k.dh", resident=size) as idx:
        assert idx.resident == "locked"
        fill(idx, 20_000)
        assert idx.resident is None
        assert locked_kib(idx.path) == 0


@pytest.mark.skipif(not ROOT, reason="mlock of a whole table needs CAP_IPC_LOCK or a big RLIMIT_MEMLOCK")
def test_readonly_open_accepts_it(tmp_path):
    with DiskHashIndex(tmp_path / "i.dh") as idx:
        fill(idx, 500)
    with DiskHashIndex(tmp_path / "i.dh", readonly=True, resident=1 << 30) as ro:
        assert ro.resident == "locked"
        assert locked_kib(ro.path) * 1024 >= os.path.getsize(ro.path)
        assert ro.get(500) == PayloadMeta(500, 1, 1, 0, 1)


@pytest.mark.skipif(not ROOT, reason="needs root to run a child as another user")
def test_mlock_refused_falls_back_to_prefetch():
    """Without CAP_IPC_LOCK and with RLIMIT_MEMLOCK of 0, mlock fails: the
    table is prefetched (MADV_WILLNEED) instead, and reads work."""
    top = tempfile.mkdtemp(prefix="dh-resident-")
    try:
        os.chmod(top, 0o777)
        path = os.path.join(top, "i.dh")
        with DiskHashIndex(path) as idx:
            fill(idx, 100)
        for name in os.listdir(top):
            os.chmod(os.path.join(top, name), 0o666)
        code = textwrap.dedent(f"""
            import os, resource
            from diskhash import DiskHashIndex, PayloadMeta     # (before: nobody cannot read root's Python)
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
            os.setgid(65534); os.setuid(65534)
            with DiskHashIndex({path!r}, readonly=True, resident=True) as ro:
                print(ro.resident, ro.get(100) == PayloadMeta(100, 1, 1, 0, 1))
        """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["prefetched", "True"]
    finally:
        shutil.rmtree(top)


def test_store_option_checked_and_named(tmp_path):
    with pytest.raises(TypeError, match="resident_index must be None, a bool or a budget"):
        PayloadStore(tmp_path / "s", resident_index="yes")
    with pytest.raises(ValueError, match="resident_index must be a budget"):
        PayloadStore(tmp_path / "s", resident_index=-5)
    assert not os.path.exists(tmp_path / "s")


@pytest.mark.skipif(not ROOT, reason="mlock of a whole table needs CAP_IPC_LOCK or a big RLIMIT_MEMLOCK")
def test_store_keeps_each_generations_index_resident(tmp_path):
    with PayloadStore(tmp_path / "s", resident_index=True) as store:
        assert store.index.resident == "locked"
        store.put_many(list(range(1, 5001)), [b"x" * 10] * 5000)      # the index grows
        assert store.index.resident == "locked"
        assert locked_kib(store.index.path) * 1024 >= os.path.getsize(store.index.path)
        store.compact()                                              # a new generation
        assert store.index.resident == "locked"
        assert locked_kib(store.index.path) * 1024 >= os.path.getsize(store.index.path)
        assert store.get(5000) == b"x" * 10
    with PayloadStore(tmp_path / "s", readonly=True, resident_index=1 << 30) as ro:
        assert ro.index.resident == "locked"
        assert ro.get(1) == b"x" * 10
    with PayloadStore(tmp_path / "s", readonly=True) as ro:
        assert ro.index.resident is None


@pytest.mark.anyio
@pytest.mark.skipif(not ROOT, reason="mlock of a whole table needs CAP_IPC_LOCK or a big RLIMIT_MEMLOCK")
async def test_async_twin(tmp_path):
    from diskhash import AsyncDiskHashIndex
    async with await AsyncDiskHashIndex.open(tmp_path / "i.dh", resident=True) as idx:
        assert idx.resident == "locked"
        await idx.set_resident(None)
        assert idx.resident is None
        with pytest.raises(TypeError, match="resident must be None"):
            await idx.set_resident(2.5)
