"""``capacity=`` and ``reserve()``: an int the table can hold, refused at
once otherwise (a huge capacity never tries to map it; a disk that cannot
hold it is an ``OSError``)."""

from __future__ import annotations

import errno
import os

import pytest
from helpers.processes import run_child

from diskhash import (
    DiskHashIndex,
)
from diskhash._index.table import MAX_CAPACITY


def listing(d) -> list[str]:
    return sorted(os.listdir(d))

HUGE_CAPACITY = r"""
import sys, os
from diskhash import DiskHashIndex
path, how = sys.argv[1], sys.argv[2]
for cap in (sys.maxsize, 2**62 - 1, 2**62 + 1, 2**64 - 1, 2**64, 2**200):
    try:
        if how == "open":
            DiskHashIndex(path, capacity=cap).close()
        else:
            with DiskHashIndex(path) as idx:
                idx.reserve(cap)
    except (ValueError, OverflowError) as exc:
        assert str(cap) in str(exc), exc
        print("refused", cap)
    else:
        print("ACCEPTED", cap)
with DiskHashIndex(path) as idx:
    print("slots", idx.num_slots, "entries", len(idx))
"""



@pytest.mark.parametrize("how", ["open", "reserve"])
def test_huge_capacity_is_refused_at_once(tmp_path, how):
    """A hostile pass found this: every call keeps its contract."""
    path = tmp_path / "big.idx"
    r = run_child(HUGE_CAPACITY, path, how, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ACCEPTED" not in r.stdout and r.stdout.count("refused") == 6
    assert "slots 4096 entries 0" in r.stdout          # the index is unchanged


def test_a_capacity_the_disk_cannot_hold_is_an_os_error(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    path = tmp_path / "big.idx"
    with pytest.raises(OSError) as info:
        DiskHashIndex(path, capacity=MAX_CAPACITY)
    assert info.value.errno in (errno.ENOSPC, errno.EFBIG) and str(path) in str(info.value)
    assert "the index is unchanged" in str(info.value)
    with DiskHashIndex(path) as idx:
        with pytest.raises(OSError):
            idx.reserve(2**50)
        assert idx.num_slots == 4096
    assert listing(tmp_path) == ["big.idx", "big.idx.lock"]


@pytest.mark.parametrize("bad", ["10", 1.5, 1.9, True, None, b"1", 10j])
def test_capacity_and_reserve_need_an_int(index_path, bad):
    """A hostile pass found this: every call keeps its contract."""
    if bad is not None:
        with pytest.raises(TypeError, match="capacity must be an int"):
            DiskHashIndex(index_path, capacity=bad)
    with DiskHashIndex(index_path) as idx:
        with pytest.raises(TypeError, match="capacity must be an int"):
            idx.reserve(bad)
        assert idx.num_slots == 4096


def test_capacity_accepts_index_types(index_path):
    """A hostile pass found this: every call keeps its contract."""
    np = pytest.importorskip("numpy")
    with DiskHashIndex(index_path, capacity=np.int64(5000)) as idx:
        assert idx.num_slots == 8192
        idx.reserve(np.uint32(7000))
        assert idx.num_slots == 16384
