"""Regressions from the hostile pass over issues 9 and 10: each test is a
defect that was reproduced, with the contract it broke (docs/cli.md,
docs/files-and-locks.md, docs/api.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.processes import subprocess_env
from helpers.records import record

import diskhash
from diskhash import DiskHashIndex
from diskhash._index import MAX_CAPACITY


def cli(*args: str, cwd: Path, stdout=subprocess.PIPE, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "diskhash", *args], check=False,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
                          env=subprocess_env(), cwd=cwd, **kwargs)


@pytest.fixture
def small_index(tmp_path: Path) -> Path:
    path = tmp_path / "x.idx"
    with DiskHashIndex(path) as idx:
        for k in range(100):
            idx.insert(k, record(k))
    return path


# -- the library -----------------------------------------------------------------


def test_repair_function_refuses_a_missing_path_and_creates_nothing(tmp_path):
    # It used to create the parent directories and an empty index, then
    # report "kept 0 entries": a repair of nothing that made something.
    target = tmp_path / "missing" / "deep" / "x.idx"
    with pytest.raises(FileNotFoundError) as info:
        diskhash.repair(target)
    assert info.value.filename == str(target)
    assert sorted(os.listdir(tmp_path)) == []


def test_repair_function_still_repairs_through_a_symlink(tmp_path, small_index):
    link = tmp_path / "link.idx"
    link.symlink_to(small_index)
    assert diskhash.repair(link).kept == 100
    assert link.is_symlink()


@pytest.mark.parametrize("readonly", [False, True])
def test_a_path_ending_in_a_slash_is_not_made_a_file(tmp_path, readonly):
    # "new/" names a directory; abspath() dropped the slash and a writable
    # open created a regular file "new" (and "new.lock").
    with pytest.raises(NotADirectoryError) as info:
        DiskHashIndex(str(tmp_path / "new") + "/", readonly=readonly)
    assert "names a directory" in str(info.value)
    assert sorted(os.listdir(tmp_path)) == []


def test_an_existing_index_named_with_a_trailing_slash_is_refused(tmp_path, small_index):
    with pytest.raises(NotADirectoryError):
        DiskHashIndex(str(small_index) + "/")
    with DiskHashIndex(small_index, readonly=True) as idx:
        assert len(idx) == 100


def test_a_timeout_beyond_float_range_waits_forever_not_overflowerror(tmp_path):
    # float(10**400) raised a bare "int too large to convert to float".
    with DiskHashIndex(tmp_path / "a.idx", timeout=10**400) as idx:
        assert len(idx) == 0
    with pytest.raises(ValueError, match="timeout"):
        DiskHashIndex(tmp_path / "a.idx", timeout=-(10**400))


def test_a_failed_create_leaves_no_lock_file(tmp_path):
    with pytest.raises(OSError):
        DiskHashIndex(tmp_path / "huge.idx", capacity=MAX_CAPACITY)
    assert sorted(os.listdir(tmp_path)) == []


WAIT_FOR_LOCK = r"""
import sys, time
from diskhash import DiskHashIndex
with DiskHashIndex(sys.argv[1], timeout=60) as idx:
    print("OPEN", flush=True)
    sys.stdin.readline()
"""


def test_a_process_waiting_on_a_discarded_lock_file_locks_the_new_one(tmp_path):
    # The failed creator unlinks its lock file while holding it; a process
    # that was already waiting on that inode must not take a lock that no
    # longer guards the path (two writers): it re-checks and locks the new file.
    import fcntl
    import time

    from diskhash import _files

    path = str(tmp_path / "a.idx")
    held = _files.IndexLock(path, True, 0.0)
    child = subprocess.Popen([sys.executable, "-c", WAIT_FOR_LOCK, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        time.sleep(0.5)                 # the child opened the old lock file and waits on it
        held.discard_file()
        assert child.stdout.readline().strip() == "OPEN"
        assert os.path.exists(path + ".lock")
        fd = os.open(path + ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):      # the file at the path is the one held
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        with pytest.raises(diskhash.IndexLockedError):
            DiskHashIndex(path, timeout=0)
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
        child.stdout.close()


# -- the command line ------------------------------------------------------------


def test_dump_with_stdout_closed_is_an_error_not_a_traceback(small_index, tmp_path):
    r = cli("dump", str(small_index), cwd=tmp_path, stdout=subprocess.DEVNULL,
            preexec_fn=lambda: os.close(1))
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2
    assert "standard output is closed" in r.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", ["info", "verify", "repair", "dump"])
def test_a_full_stdout_names_standard_output_not_the_index(small_index, tmp_path, command):
    # "diskhash: error: x.idx: No space left on device" blamed the index.
    with open("/dev/full", "w") as full:
        r = cli(command, str(small_index), cwd=tmp_path, stdout=full)
    assert r.returncode == 2, r.stderr
    assert "standard output: No space left on device" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    with DiskHashIndex(small_index, readonly=True) as idx:
        idx.verify()
        assert len(idx) == 100


# -- odd files in the lock file's place -----------------------------------------

LOCK_IN_PLACE = r"""
import os, sys
from diskhash import DiskHashIndex
path, kind, readonly = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
lock = path + ".lock"
os.unlink(lock)
if kind == "fifo":
    os.mkfifo(lock)
else:
    os.symlink(kind, lock)
try:
    DiskHashIndex(path, readonly=readonly).close()
except OSError as exc:
    print(exc.errno, exc.filename, exc.strerror)
else:
    print("opened")
"""


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("kind", ["fifo", "/dev/null", "/dev/zero"])
def test_an_odd_file_in_the_lock_files_place_is_named(small_index, kind, readonly):
    # A FIFO gave a bare "[Errno 29] Illegal seek", /dev/null a bare
    # "[Errno 19] No such device" (from mmap), neither naming a file;
    # a reader could even lock /dev/null.
    r = subprocess.run([sys.executable, "-c", LOCK_IN_PLACE, str(small_index), kind,
                        "1" if readonly else "0"], check=False, capture_output=True,
                       text=True, timeout=60, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    errno_, filename, message = r.stdout.strip().split(" ", 2)
    assert int(errno_) == 22
    assert filename == f"{small_index}.lock"
    assert "lock file is a" in message and "not a regular file" in message


@pytest.mark.parametrize(("keys", "named"), [
    (None, "not NoneType"), ({1: 2}, "not dict"), ((k for k in range(3)), "not generator"),
    ([1, None], "a NoneType among them"), ([1, uuid.UUID(int=2)], "a UUID among them"),
])
def test_batch_keys_that_are_not_ids_are_named(index_path, keys, named):
    # These all said "ids of 2**64 and above go in a diskhash.KEY_DTYPE array".
    with DiskHashIndex(index_path) as idx:
        for call in (idx.get_many, idx.contains_many):
            with pytest.raises(TypeError, match=named) as info:
                call(keys)
            assert "2**64 and above" not in str(info.value)


def test_batch_keys_of_2_64_and_above_still_point_at_key_dtype(index_path):
    with DiskHashIndex(index_path) as idx, pytest.raises(TypeError, match="KEY_DTYPE"):
        idx.get_many([1, 2**64])


def test_item_assignment_is_a_typeerror_not_notimplemented(index_path):
    # ``idx[k] = meta`` raised NotImplementedError ("Subscript assignment not
    # supported"), Cython's answer when only __delitem__ is defined.
    with DiskHashIndex(index_path) as idx:
        key = 1
        with pytest.raises(TypeError, match="insert"):
            idx[key] = record(key)
        assert key not in idx
        idx.insert(1, record(1))
        del idx[1]
        assert len(idx) == 0


# -- SIGKILL in the middle of insert_many and its rollback ------------------------

KILLED_BATCH = r"""
import sys
import numpy as np
from diskhash import DiskHashIndex, META_DTYPE, CorruptIndexError
idx = DiskHashIndex(sys.argv[1])
n = int(sys.argv[2])
keys = np.arange(10**6, 10**6 + n, dtype="u8")
metas = np.zeros(n, dtype=META_DTYPE)
metas["offset"] = keys * 3
print("go", flush=True)
while True:                      # each call writes part of the batch, meets a
    try:                         # bad tag, rolls back, raises; until killed
        idx.insert_many(keys, metas)
    except CorruptIndexError:
        pass
"""


@pytest.mark.slow
def test_sigkill_during_insert_many_and_its_rollback_leaves_a_healable_table(tmp_path):
    """Killed mid-batch (or mid-rollback), insert_many leaves each key of the
    batch inserted or not -- as that many single inserts would -- and nothing
    else: the next writable open heals the count, and verify() finds only the
    planted damage.  (A kill is not all-or-nothing for a batch: docs/batch.md.)"""
    import random
    import time

    from diskhash import CorruptIndexError
    from diskhash._format import SLOT_FIELDS, slot_offset

    path = tmp_path / "k.idx"
    with DiskHashIndex(path, capacity=300_000) as idx:
        for k in range(1000):
            idx.insert(k, record(k))
        slots = idx.num_slots
    tag_at = SLOT_FIELDS["tag"][0]
    fd = os.open(path, os.O_RDWR)
    try:
        planted = 0
        for s in range(slots // 3, slots, slots // 40):       # bad tags, met mid-batch
            if os.pread(fd, 1, slot_offset(s) + tag_at) == b"\0":
                os.pwrite(fd, b"\x07", slot_offset(s) + tag_at)
                planted += 1
    finally:
        os.close(fd)
    n = 200_000
    rng = random.Random(9)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", KILLED_BATCH, str(path), str(n)],
                                 stdout=subprocess.PIPE, text=True, env=subprocess_env())
        try:
            assert child.stdout.readline().strip() == "go"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            child.kill()
            child.wait(timeout=60)
            child.stdout.close()
        with DiskHashIndex(path) as idx:
            assert 1000 <= len(idx) <= 1000 + n
            with pytest.raises(CorruptIndexError) as info:
                idx.verify()
            assert len(info.value.defects) == planted, info.value.defects[:5]
            assert all("bad tag" in d for d in info.value.defects)
            for k in range(1000):
                assert idx[k] == record(k)
            found = 0
            for k in range(10**6, 10**6 + n):
                try:
                    meta = idx.get(k)
                except CorruptIndexError:   # its probe meets a planted bad tag, as
                    continue                # insert_many's did: never inserted
                if meta is not None:
                    assert meta.offset == k * 3
                    found += 1
            assert found == len(idx) - 1000


# -- iteration never yields a key after it is gone ------------------------------


@pytest.mark.parametrize("what", ["keys", "values", "items"])
def test_iteration_stops_at_the_next_item_after_a_delete(index_path, what):
    # Iteration copies a chunk of slots ahead; a key deleted after the copy
    # was still yielded (and the RuntimeError came a chunk later).
    with DiskHashIndex(index_path) as idx:
        for k in range(100):
            idx.insert(k, record(k))
        order = list(idx.keys())
        it = iter(getattr(idx, what)())
        next(it)
        idx.delete(order[5])
        with pytest.raises(RuntimeError, match="changed size during iteration"):
            next(it)


def test_iteration_after_close_raises_at_the_next_item(index_path):
    from diskhash import IndexClosedError

    idx = DiskHashIndex(index_path)
    for k in range(100):
        idx.insert(k, record(k))
    it = iter(idx.items())
    next(it)
    idx.close()
    with pytest.raises(IndexClosedError):
        next(it)


@pytest.mark.anyio
async def test_async_iteration_stops_at_the_next_item_after_a_delete(index_path):
    from diskhash import AsyncDiskHashIndex, IndexClosedError

    idx = await AsyncDiskHashIndex.open(index_path)
    async with idx:
        for k in range(100):
            await idx.insert(k, record(k))
        order = list(idx.sync.keys())
        it = idx.keys().__aiter__()
        await it.__anext__()
        await idx.delete(order[5])
        with pytest.raises(RuntimeError, match="changed size during iteration"):
            await it.__anext__()
        it = idx.items().__aiter__()
        await it.__anext__()
    with pytest.raises(IndexClosedError):
        await it.__anext__()
