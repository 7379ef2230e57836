"""Attack pass on the shared (multi-process) DiskHashIndex: what broke, and
what held that the other tests do not cover.  Every child runs under a
timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.processes import subprocess_env

from diskhash import DiskHashIndex, IndexLockedError, PayloadMeta

CHILD_TIMEOUT = 120


def rec(key: int, version: int = 1) -> PayloadMeta:
    return PayloadMeta(key, version, (key * 7 + version) & 0xFFFF, 0,
                       (key ^ (version * 2654435761)) & 0xFFFFFFFF)


@pytest.fixture
def read_only_view(tmp_path):
    """``tmp_path/ro``: a read-only bind mount of ``tmp_path/rw`` (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    r = subprocess.run(["mount", "--bind", str(rw), str(ro)], capture_output=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount: {r.stderr!r}")
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True, timeout=30)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only: {r.stderr!r}")
        yield rw, ro
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True, timeout=30)


def test_a_reader_on_a_read_only_file_system_follows_a_writer_and_its_grows(read_only_view):
    """Held: a read-only open through a read-only mount (lock file opened
    O_RDONLY) sees another opener's writes and follows its grow."""
    rw, ro = read_only_view
    with DiskHashIndex(rw / "e.idx") as writer:
        writer.insert(1, rec(1))
        with DiskHashIndex(ro / "e.idx", readonly=True) as reader:
            assert reader[1] == rec(1)
            for k in range(2, 9000):
                writer.insert(k, rec(k))
            writer.insert(1, rec(1, 2))
            assert reader[1] == rec(1, 2) and reader[8999] == rec(8999)
            assert len(reader) == 8999 and reader.num_slots == writer.num_slots > 4096


def test_a_writable_open_on_a_read_only_file_system_names_the_problem(read_only_view):
    """Found by the attack pass on the shared index: ``DiskHashIndex(path)`` (writable, shared) of an index on a
    read-only file system -- or whose lock file the user may not write --
    raises ``OSError: [Errno 9] Bad file descriptor`` naming nothing.

    ``IndexLock._open`` (diskhash/_fs/files.py, the ``except`` after the
    ``O_RDWR | O_CREAT`` open) falls back to an ``O_RDONLY`` lock file for
    every open that is not ``exclusive``: that fallback was meant for
    readers, but since the shared default a writable open is not exclusive
    either.  ``open_or_create`` then takes ``lock.creating()``, an OFD
    ``F_WRLCK`` on the read-only descriptor: EBADF.  Before the shared
    default the same open raised the original EROFS/EACCES naming the lock
    file.  Fixed: ``IndexLock`` is told whether the open is read-only and
    takes the O_RDONLY fallback only then."""
    rw, ro = read_only_view
    with DiskHashIndex(rw / "e.idx") as idx:
        idx.insert(1, rec(1))
    with pytest.raises(OSError, match="e.idx") as info:
        DiskHashIndex(ro / "e.idx")
    assert info.value.errno in (30, 13)          # EROFS or EACCES, not EBADF
    with DiskHashIndex(ro / "e.idx", readonly=True) as reader:   # nothing was changed
        assert reader[1] == rec(1)


def spawn(script: str, *args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or subprocess_env())


def killed(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=CHILD_TIMEOUT)
    assert proc.returncode == -signal.SIGKILL


# A grow slowed down to seconds (the "pause" knob, one-slot slices), so the
# parent can kill the child while its temporary table file exists.
SLOW_GROW = r"""
import sys
import time
from diskhash import DiskHashIndex, IndexLockedError, PayloadMeta
from diskhash._index import table
table.GROW_SLICE_SLOTS = 8
table.GROW_PAUSE_US = 2000
with DiskHashIndex(sys.argv[1], timeout=30) as idx:
    print("open", flush=True)
    idx.reserve(10000)
    print("grown", flush=True)
"""


def kill_mid_grow(index_path) -> None:
    proc = spawn(SLOW_GROW, index_path, env={**subprocess_env(), "DISKHASH_GROW_KNOBS": "pause"})
    try:
        assert proc.stdout.readline() == "open\n"
        prefix = f".{index_path.name}.grow-{proc.pid}-"
        deadline = time.monotonic() + 60
        while not any(f.startswith(prefix) for f in os.listdir(index_path.parent)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        time.sleep(0.1)
    finally:
        killed(proc)


def temp_files(index_path) -> list[str]:
    return [f for f in os.listdir(index_path.parent) if f.endswith(".tmp")]


def test_a_writer_killed_mid_grow_is_recovered_while_others_keep_the_index_open(index_path):
    """Held: readers and the next writer go on; nothing is lost; the table is sound."""
    with DiskHashIndex(index_path) as keeper, DiskHashIndex(index_path, readonly=True) as reader:
        for k in range(1000):
            keeper.insert(k, rec(k))
        kill_mid_grow(index_path)
        assert reader[999] == rec(999)
        keeper.insert(5000, rec(5000))                   # EOWNERDEAD: recovers, then writes
        assert reader[5000] == rec(5000) and len(reader) == 1001
        keeper.verify()
    with DiskHashIndex(index_path) as idx:               # alone: the leftover goes
        assert temp_files(index_path) == []
        assert len(idx) == 1001


def test_a_killed_grow_leaves_no_temporary_file_behind_while_the_index_stays_open(index_path):
    """Found by the attack pass on the shared index: every writer SIGKILLed mid-grow (or mid-repair) leaves its
    temporary table (``.edges.idx.grow-<pid>-….tmp``, as big as the new
    table) until an open finds itself alone with the index
    (``open_or_create``: ``remove_leftovers`` only when ``lock.quiet``).
    A server whose workers are recycled never has a quiet open: 200
    kills in the attack run's mixed workload left one table-sized file
    per killed grow, the disk fills.

    Fixed: the writer that recovers a dead one
    (``recover_dead_writer`` in diskhash/_index/table_open.pxi, holding
    the cross-process mutex, so no grow or repair of a live process is
    running) removes every ``.<name>.grow-*.tmp`` and ``.repair-*`` file."""
    with DiskHashIndex(index_path) as keeper:
        keeper.insert(1, rec(1))
        kill_mid_grow(index_path)
        assert temp_files(index_path)                    # the killed grow's
        keeper.insert(2, rec(2))                         # recovers the dead writer
        assert temp_files(index_path) == []


WRITING_THEN_WAIT = r"""
import sys, time
from diskhash import DiskHashIndex, IndexLockedError, PayloadMeta
def rec(k, v=1):
    return PayloadMeta(k, v, (k * 7 + v) & 0xFFFF, 0, (k ^ (v * 2654435761)) & 0xFFFFFFFF)
idx = DiskHashIndex(sys.argv[1], timeout=30)
idx.insert(7, rec(7))
with idx.writing():
    idx.insert(8, rec(8))
    idx.insert(7, rec(7, 2))
    print("inside", flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_inside_writing_block_frees_the_lock_for_the_others(index_path):
    """Held: each call of a ``writing()`` block is complete when it returns
    (the block is not a transaction), and a kill inside the block frees
    the writer lock for the next writer at once."""
    with DiskHashIndex(index_path) as keeper, DiskHashIndex(index_path, readonly=True) as reader:
        proc = spawn(WRITING_THEN_WAIT, index_path)
        try:
            assert proc.stdout.readline() == "inside\n"
        finally:
            killed(proc)
        assert reader[8] == rec(8) and reader[7] == rec(7, 2)
        t0 = time.monotonic()
        keeper.insert(9, rec(9))
        assert time.monotonic() - t0 < 10
        assert len(reader) == 3
        keeper.verify()


def test_exclusive_and_shared_opens_exclude_each_other_and_say_so(index_path):
    """Held: an exclusive open waits its timeout beside shared opens (of
    other processes too) and a shared open beside an exclusive one."""
    keeper = spawn(r"""
import sys, time
from diskhash import DiskHashIndex
with DiskHashIndex(sys.argv[1]):
    print("open", flush=True)
    time.sleep(600)
""", index_path)
    try:
        assert keeper.stdout.readline() == "open\n"
        t0 = time.monotonic()
        with pytest.raises(IndexLockedError, match="edges.idx: index is locked by"):
            DiskHashIndex(index_path, exclusive=True, timeout=0.3)
        assert time.monotonic() - t0 >= 0.3
        with DiskHashIndex(index_path, readonly=True) as reader:     # shared beside shared
            assert len(reader) == 0
    finally:
        killed(keeper)
    with DiskHashIndex(index_path, exclusive=True):
        for kw in ({}, {"readonly": True}):
            with pytest.raises(IndexLockedError, match="exclusive=True"):
                DiskHashIndex(index_path, **kw)


def test_an_exclusive_open_refused_by_shared_opens_says_why(index_path):
    """Found by the attack pass on the shared index: ``DiskHashIndex(path, exclusive=True)`` while shared opens
    exist raises "index is locked by another reader or writer (many
    readers or one writer per file)": the rule quoted is the old one --
    several writers hold the index at once now -- and nothing says that
    ``exclusive=True`` is what needs the index to itself.  (The reverse
    case, a reader-only ``exclusive=True, readonly=True`` holder, is
    called "an exclusive=True writer".)

    Fixed in ``IndexLock._acquire`` (diskhash/_fs/files.py): an index's
    exclusive open says other opens hold it and exclusive=True needs it to
    itself; a shared open blocked by an exclusive one names "an
    exclusive=True open"."""
    with DiskHashIndex(index_path):
        with pytest.raises(IndexLockedError, match="exclusive=True") as info:
            DiskHashIndex(index_path, exclusive=True)
        assert "one writer per file" not in str(info.value)
