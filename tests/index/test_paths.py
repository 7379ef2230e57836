"""Paths an index is opened at: symlinks, hard links, FIFOs, directories,
empty, missing and slash-ended paths.  One writer per file whatever the path
names it, and a refused open creates nothing.  Hang checks run in a child
Python with a timeout."""

from __future__ import annotations

import os
import time

import pytest
from helpers.processes import run_child

import diskhash
from diskhash import (
    CorruptIndexError,
    DiskHashIndex,
    IndexLockedError,
    PayloadMeta,
)


def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_a_symlink_shares_the_targets_lock(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    real, link = tmp_path / "real.idx", tmp_path / "link.idx"
    os.symlink("real.idx", link)
    with DiskHashIndex(real, exclusive=True) as idx:
        idx.insert(1, rec(1))
        for readonly in (False, True):
            with pytest.raises(IndexLockedError) as info:
                DiskHashIndex(link, readonly=readonly)
            assert str(link) in str(info.value)
    with DiskHashIndex(link, readonly=True) as a, DiskHashIndex(real, readonly=True) as b:
        assert a[1] == b[1] == rec(1)
    # Shared opens through the link and the target take turns on one lock file.
    with DiskHashIndex(real) as w, DiskHashIndex(link) as w2:
        w.insert(2, rec(2))
        assert w2[2] == rec(2)
        with pytest.raises(IndexLockedError):
            DiskHashIndex(link, exclusive=True)
    assert listing(tmp_path) == ["link.idx", "real.idx", "real.idx.lock"]


def test_a_grow_through_a_symlink_replaces_the_target_not_the_link(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    (tmp_path / "data").mkdir()
    real, link = tmp_path / "data" / "real.idx", tmp_path / "link.idx"
    with DiskHashIndex(real) as idx:
        idx.insert(0, rec(0))
    os.symlink(real, link)
    with DiskHashIndex(link) as idx:
        for k in range(1, 4999):
            idx.insert(k, rec(k))
        assert idx.num_slots == 8192 and idx.path == str(link)
    assert os.path.islink(link) and os.readlink(link) == str(real)
    with DiskHashIndex(real, readonly=True) as idx:
        assert len(idx) == 4999 and idx[4998] == rec(4998)
        idx.verify()
    assert listing(tmp_path / "data") == ["real.idx", "real.idx.lock"]


def test_a_writable_open_of_a_dangling_symlink_creates_the_target(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    link = tmp_path / "link.idx"
    target = tmp_path / "sub" / "target.idx"
    os.symlink(target, link)
    with DiskHashIndex(link) as idx:
        idx.insert(3, rec(3))
    assert os.path.islink(link) and os.readlink(link) == str(target)
    with DiskHashIndex(target, readonly=True) as idx:
        assert idx[3] == rec(3)
    assert listing(tmp_path) == ["link.idx", "sub"]


def test_a_read_only_open_of_a_dangling_symlink_creates_nothing(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    link = tmp_path / "link.idx"
    os.symlink(tmp_path / "nowhere.idx", link)
    with pytest.raises(FileNotFoundError):
        DiskHashIndex(link, readonly=True)
    assert listing(tmp_path) == ["link.idx"]


def test_a_hard_link_shares_one_writer(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    a, b = tmp_path / "a.idx", tmp_path / "b.idx"
    with DiskHashIndex(a) as idx:
        idx.insert(1, rec(1))
    os.link(a, b)
    with DiskHashIndex(a) as idx:
        for readonly in (False, True):
            with pytest.raises(IndexLockedError, match="hard link") as info:
                DiskHashIndex(b, readonly=readonly)
            assert str(b) in str(info.value)
        # A grow publishes a new file under a's name: b keeps the old table as
        # it was at the grow (3072 entries, 4096 slots), a separate file from
        # now on (documented in docs/guide/files-and-locks.md).
        for k in range(2, 4000):
            idx.insert(k, rec(k))
        assert idx.num_slots == 8192
        with DiskHashIndex(b, readonly=True) as old:
            assert len(old) == 3072 and old.num_slots == 4096 and 3999 not in old
            old.verify()
    assert os.stat(a).st_ino != os.stat(b).st_ino


def test_hard_link_readers_share(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    a, b = tmp_path / "a.idx", tmp_path / "b.idx"
    with DiskHashIndex(a) as idx:
        idx.insert(1, rec(1))
    os.link(a, b)
    with DiskHashIndex(a, readonly=True) as x, DiskHashIndex(b, readonly=True) as y:
        assert x[1] == y[1] == rec(1)


FIFO_OPEN = r"""
import sys
from diskhash import DiskHashIndex
try:
    DiskHashIndex(sys.argv[1], readonly=sys.argv[2] == "r")
except OSError as exc:
    print("refused", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("mode", ["r", "w"])
def test_opening_a_fifo_is_refused_without_blocking(tmp_path, mode):
    """A hostile pass found this: every call keeps its contract."""
    fifo = tmp_path / "pipe.idx"
    os.mkfifo(fifo)
    r = run_child(FIFO_OPEN, fifo, mode, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused OSError") and "a FIFO, not an index file" in r.stdout
    assert str(fifo) in r.stdout
    assert listing(tmp_path) == ["pipe.idx"]


def test_empty_path_is_refused_and_creates_nothing(tmp_path, monkeypatch):
    """A hostile pass found this: every call keeps its contract."""
    monkeypatch.chdir(tmp_path)
    for readonly in (False, True):
        with pytest.raises(ValueError, match="path is empty"):
            DiskHashIndex("", readonly=readonly)
    assert listing(tmp_path) == [] and listing(tmp_path.parent).count(tmp_path.name + ".lock") == 0


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_opening_a_directory_or_a_non_index_file_creates_nothing(tmp_path, readonly):
    """A hostile pass found this: every call keeps its contract."""
    (tmp_path / "dir.idx").mkdir()
    (tmp_path / "notes.txt").write_text("not an index, and long enough to have a header" * 3)
    (tmp_path / "short").write_bytes(b"abc")
    with pytest.raises(IsADirectoryError, match="a directory, not an index file") as info:
        DiskHashIndex(tmp_path / "dir.idx", readonly=readonly)
    assert str(tmp_path / "dir.idx") in str(info.value)
    for name in ("notes.txt", "short"):
        with pytest.raises(CorruptIndexError) as cinfo:
            DiskHashIndex(tmp_path / name, readonly=readonly)
        assert cinfo.value.path == str(tmp_path / name)
    assert listing(tmp_path) == ["dir.idx", "notes.txt", "short"]
    assert listing(tmp_path / "dir.idx") == []


def test_a_missing_read_only_path_creates_nothing(tmp_path):
    """A hostile pass found this: every call keeps its contract."""
    with pytest.raises(FileNotFoundError):
        DiskHashIndex(tmp_path / "sub" / "x.idx", readonly=True)
    assert listing(tmp_path) == []


def test_repair_function_refuses_a_missing_path_and_creates_nothing(tmp_path):
    # It used to create the parent directories and an empty index, then
    # report "kept 0 entries": a repair of nothing that made something.
    """A hostile pass over the index, its files and the CLI found this."""
    target = tmp_path / "missing" / "deep" / "x.idx"
    with pytest.raises(FileNotFoundError) as info:
        diskhash.repair(target)
    assert info.value.filename == str(target)
    assert sorted(os.listdir(tmp_path)) == []


def test_repair_function_still_repairs_through_a_symlink(tmp_path, small_index):
    """A hostile pass over the index, its files and the CLI found this."""
    link = tmp_path / "link.idx"
    link.symlink_to(small_index)
    assert diskhash.repair(link).kept == 100
    assert link.is_symlink()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_path_ending_in_a_slash_is_not_made_a_file(tmp_path, readonly):
    # "new/" names a directory; abspath() dropped the slash and a writable
    # open created a regular file "new" (and "new.lock").
    """A hostile pass over the index, its files and the CLI found this."""
    with pytest.raises(NotADirectoryError) as info:
        DiskHashIndex(str(tmp_path / "new") + "/", readonly=readonly)
    assert "names a directory" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == []


def test_an_existing_index_named_with_a_trailing_slash_is_refused(tmp_path, small_index):
    """A hostile pass over the index, its files and the CLI found this."""
    with pytest.raises(NotADirectoryError):
        DiskHashIndex(str(small_index) + "/")
    with DiskHashIndex(small_index, readonly=True) as idx:
        assert len(idx) == 100


def test_a_hard_link_opens_right_after_a_grow_whose_old_table_is_still_closing(tmp_path, monkeypatch):
    """A grow hands its old table to a thread that closes it (freeing a big
    file off the caller's path); the old file's inode lock went only with
    that close, so opening another name of the old file right after the
    grow raised IndexLockedError while the thread had not run yet (seen as
    a flake of the test above under load).  The lock now goes at once."""
    import diskhash._index.table as table

    real = table._retire
    monkeypatch.setattr(table, "_retire", lambda *args: (time.sleep(1.0), real(*args)))
    a, b = tmp_path / "a.idx", tmp_path / "b.idx"
    with DiskHashIndex(a) as idx:
        idx.insert(1, rec(1))
    os.link(a, b)
    with DiskHashIndex(a) as idx:
        for k in range(2, 4000):
            idx.insert(k, rec(k))
        assert idx.num_slots == 8192
        with DiskHashIndex(b, readonly=True) as old:       # at once: the thread still sleeps
            assert len(old) == 3072
