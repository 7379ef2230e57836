"""The lock file's rules across processes and index objects: any number of
shared opens (the default), or one ``exclusive=True`` open (today's
single-writer rule, kept as an option); what fork() does to an inherited
index.  Several processes reading and writing one index at once:
tests/processes/test_index_shared.py."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from helpers.processes import subprocess_env
from helpers.records import record

import diskhash
from diskhash import (
    DiskHashIndex,
    IndexClosedError,
    IndexLockedError,
    PayloadMeta,
)
from diskhash._index.table import MAX_CAPACITY


def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)


WAIT_FOR_LOCK = r"""
import sys, time
from diskhash import DiskHashIndex
with DiskHashIndex(sys.argv[1], timeout=60) as idx:
    print("OPEN", flush=True)
    sys.stdin.readline()
"""

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


HOLDER = """
import sys
from diskhash import DiskHashIndex, PayloadMeta
path, mode = sys.argv[1], sys.argv[2]
idx = DiskHashIndex(path, readonly=(mode == "r"), timeout=float(sys.argv[3]),
                    exclusive=(mode == "w"))
if mode in "ws":
    idx.insert(7, PayloadMeta(7, 70, 700, 0, 7000))
print("ready", flush=True)
sys.stdin.readline()
idx.close()
print("closed", flush=True)
sys.stdin.readline()
"""


class Holder:
    """Another process holding the index open (``mode``: "w" an exclusive=True
    writer, "s" a shared writer, "r" a shared reader)."""

    def __init__(self, path, mode: str, timeout: float = 0.0) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), mode, str(timeout)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=subprocess_env(),
                                     cwd=os.path.dirname(path))
        line = self.proc.stdout.readline()
        if line != "ready\n":
            self.proc.kill()
            raise AssertionError(f"holder failed: {line!r} {self.proc.stderr.read()}")

    def close_index(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "closed\n"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> "Holder":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def existing(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, record(1))
    return index_path


def assert_locked(path, readonly: bool, timeout: float = 0.0,
                  exclusive: bool = False) -> IndexLockedError:
    with pytest.raises(IndexLockedError) as info:
        DiskHashIndex(path, readonly=readonly, timeout=timeout, exclusive=exclusive)
    err = info.value
    assert err.path == str(path) and str(path) in str(err)
    assert "index is locked by" in str(err)
    return err


# -- across processes ----------------------------------------------------------

@pytest.mark.parametrize("readonly", [False, True], ids=["writer", "reader"])
def test_an_exclusive_writer_in_another_process_excludes_everyone(existing, readonly):
    with Holder(existing, "w") as holder:
        err = assert_locked(existing, readonly=readonly)
        assert "an exclusive=True open" in str(err)
        assert_locked(existing, readonly=readonly, exclusive=True)
        holder.close_index()
        with DiskHashIndex(existing, readonly=readonly) as idx:
            assert idx[7] == (7, 70, 700, 0, 7000)     # the other writer's insert


def test_readers_in_two_processes_share_the_file_and_exclude_an_exclusive_writer(existing):
    with Holder(existing, "r") as holder:
        with DiskHashIndex(existing, readonly=True) as idx:
            assert idx[1] == record(1)
        assert_locked(existing, readonly=False, exclusive=True)
        with DiskHashIndex(existing) as idx:        # a shared writer gets in
            idx.insert(2, record(2))
        holder.close_index()
        with DiskHashIndex(existing, exclusive=True) as idx:
            idx.insert(3, record(3))


@pytest.mark.parametrize("mode", ["s", "r"])
def test_a_shared_open_in_another_process_lets_everyone_in_but_an_exclusive_writer(existing, mode):
    with Holder(existing, mode) as holder:
        with DiskHashIndex(existing) as w, DiskHashIndex(existing, readonly=True) as r:
            w.insert(4, record(4))
            assert r[4] == record(4) and w[1] == record(1)
            if mode == "s":
                assert r[7] == (7, 70, 700, 0, 7000)    # the other process's insert
        assert_locked(existing, readonly=False, exclusive=True)
        holder.close_index()
    with DiskHashIndex(existing, exclusive=True) as idx:
        assert idx[4] == record(4)


def test_timeout_waits_then_raises_naming_the_file(existing):
    with Holder(existing, "w"):
        t0 = time.monotonic()
        err = assert_locked(existing, readonly=False, timeout=0.3, exclusive=True)
        waited = time.monotonic() - t0
        assert waited >= 0.3
        assert "after waiting 0.3s" in str(err)


def test_timeout_succeeds_once_the_holder_closes(existing):
    with Holder(existing, "w") as holder:
        holder.proc.stdin.write("\n")          # the holder closes ~now, we wait up to 10 s
        holder.proc.stdin.flush()
        t0 = time.monotonic()
        with DiskHashIndex(existing, timeout=10, exclusive=True) as idx:
            assert idx[7] == (7, 70, 700, 0, 7000)
        assert time.monotonic() - t0 < 10
        assert holder.proc.stdout.readline() == "closed\n"


# A holder that says "waiting" once its first attempt at the lock has failed,
# so the test knows it is waiting (the lock is polled: fcntl.flock with LOCK_NB).
WAITING_HOLDER = """
import fcntl
_flock = fcntl.flock
def flock(fd, op):
    try:
        return _flock(fd, op)
    except BlockingIOError:
        if not flock.said:
            flock.said = True
            print("waiting", flush=True)
        raise
flock.said = False
fcntl.flock = flock
""" + HOLDER


def test_a_waiting_writer_in_another_process_gets_the_lock_after_close(existing):
    idx = DiskHashIndex(existing, exclusive=True)
    with Holder.__new__(Holder) as holder:
        holder.proc = subprocess.Popen(
            [sys.executable, "-c", WAITING_HOLDER, str(existing), "w", "10"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=subprocess_env(), cwd=existing.parent)
        assert holder.proc.stdout.readline() == "waiting\n"   # it found our lock taken
        assert holder.proc.poll() is None         # still waiting for our lock
        idx.insert(3, record(3))
        idx.close()
        assert holder.proc.stdout.readline() == "ready\n"
        holder.close_index()
    with DiskHashIndex(existing, readonly=True) as idx:
        assert idx[3] == record(3) and idx[7] == (7, 70, 700, 0, 7000)


def test_the_lock_dies_with_the_process(existing):
    with Holder(existing, "w") as holder:
        assert_locked(existing, readonly=False)
        assert_locked(existing, readonly=False, exclusive=True)
        holder.kill()                             # no close(): SIGKILL
        with DiskHashIndex(existing) as idx:      # free at once; the open heals
            assert idx[7] == (7, 70, 700, 0, 7000)
            idx.verify()


# -- two index objects in one process -----------------------------------------

def test_two_objects_in_one_process_follow_the_same_rule(existing):
    with DiskHashIndex(existing, exclusive=True) as writer:
        assert_locked(existing, readonly=False)
        assert_locked(existing, readonly=True)
        writer.insert(5, record(5))
    with DiskHashIndex(existing, readonly=True) as r1, DiskHashIndex(existing, readonly=True) as r2:
        assert r1[5] == r2[5] == record(5)
        assert_locked(existing, readonly=False, exclusive=True)
    with DiskHashIndex(existing) as w1, DiskHashIndex(existing) as w2:    # shared: two writers
        w1.insert(6, record(6))
        assert w2.pop(6) == record(6) and 6 not in w1
    with DiskHashIndex(existing) as writer:       # close() released every lock
        assert writer[5] == record(5)


def test_a_failed_open_leaves_the_holders_lock_alone(existing):
    with DiskHashIndex(existing, exclusive=True) as writer:
        for _ in range(3):
            assert_locked(existing, readonly=False)
        writer.insert(6, record(6))
        r = subprocess.run([sys.executable, "-c", HOLDER, str(existing), "w", "0"],
                           capture_output=True, text=True, env=subprocess_env(), timeout=60,
                           cwd=existing.parent)
        assert r.returncode != 0 and "IndexLockedError" in r.stderr


# -- fork() ----------------------------------------------------------------------

def _in_forked_child(idx, body) -> str:
    """Run ``body(idx)`` in a forked child; returns what it wrote to the pipe."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 0
        try:
            os.close(rfd)
            out = body(idx)
            os.write(wfd, out.encode())
        except BaseException as exc:
            os.write(wfd, f"child failed: {exc!r}".encode())
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    chunks = []
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, b"".join(chunks).decode()
    return b"".join(chunks).decode()


def test_a_forked_child_cannot_use_an_inherited_index(existing):
    def body(idx):
        results = []
        calls = {
            "get": lambda: idx.get(1), "getitem": lambda: idx[1], "contains": lambda: 1 in idx,
            "len": lambda: len(idx), "iter": lambda: list(idx), "insert": lambda: idx.insert(9, record(9)),
            "delete": lambda: idx.delete(1), "pop": lambda: idx.pop(1), "save": idx.save,
            "verify": idx.verify, "repair": idx.repair, "reserve": lambda: idx.reserve(10**5),
            "with": lambda: idx.__enter__(),
        }
        for name, call in calls.items():
            try:
                call()
                results.append(f"{name}: no error")
            except IndexClosedError as exc:
                assert "inherited across fork()" in str(exc) and idx.path in str(exc), exc
                results.append(f"{name}: ok")
        idx.close()            # allowed, and must not unlock the parent's file
        assert idx.closed
        return "\n".join(results)

    with DiskHashIndex(existing, exclusive=True) as idx:
        idx.insert(2, record(2))
        out = _in_forked_child(idx, body)
        assert out.splitlines() and all(line.endswith(": ok") for line in out.splitlines()), out
        # The parent keeps its lock and its index.
        assert_locked(existing, readonly=False)
        assert_locked(existing, readonly=True)
        idx.insert(3, record(3))
        for k in range(4, 5000):            # and can still grow
            idx.insert(k, record(k))
        assert idx[1] == record(1) and idx[2] == record(2) and len(idx) == 4999
        idx.verify()
    with DiskHashIndex(existing, readonly=True) as idx:
        assert len(idx) == 4999 and idx[4999] == record(4999)


def test_a_forked_reader_child_cannot_use_it_either(existing):
    with DiskHashIndex(existing, readonly=True) as idx:
        def body(child_idx):
            with pytest.raises(IndexClosedError, match="fork"):
                child_idx.get(1)
            return "done"
        assert _in_forked_child(idx, body) == "done"
        assert idx[1] == record(1)
        assert_locked(existing, readonly=False, exclusive=True)


FORKING_WRITER = """
import os, sys, time
from diskhash import DiskHashIndex, PayloadMeta
idx = DiskHashIndex(sys.argv[1], exclusive=True)
idx.insert(8, PayloadMeta(8, 1, 2, 0, 3))
pid = os.fork()
if pid == 0:
    time.sleep(120)         # a long-lived child (a worker) that never touches idx
    os._exit(0)
print(pid, flush=True)
time.sleep(120)
"""


def test_a_forked_child_does_not_keep_a_dead_parents_lock(existing):
    """The child drops its copies of the descriptors at fork: when the writer
    dies, the file is free even though its child lives on."""
    proc = subprocess.Popen([sys.executable, "-c", FORKING_WRITER, str(existing)],
                            stdout=subprocess.PIPE, text=True, env=subprocess_env(),
                            cwd=existing.parent)
    child = None
    try:
        child = int(proc.stdout.readline())
        assert_locked(existing, readonly=False)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        os.kill(child, 0)                          # the child is still alive
        with DiskHashIndex(existing, timeout=5) as idx:
            assert idx[8] == (8, 1, 2, 0, 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_timeout_beyond_float_range_waits_forever_not_overflowerror(tmp_path):
    # float(10**400) raised a bare "int too large to convert to float".
    """A hostile pass over the index, its files and the CLI found this."""
    with DiskHashIndex(tmp_path / "a.idx", timeout=10**400) as idx:
        assert len(idx) == 0
    with pytest.raises(ValueError, match="timeout"):
        DiskHashIndex(tmp_path / "a.idx", timeout=-(10**400))


def test_a_failed_create_leaves_no_lock_file(tmp_path):
    """A hostile pass over the index, its files and the CLI found this."""
    with pytest.raises(OSError):
        DiskHashIndex(tmp_path / "huge.idx", capacity=MAX_CAPACITY)
    assert sorted(os.listdir(tmp_path)) == []


def test_a_process_waiting_on_a_discarded_lock_file_locks_the_new_one(tmp_path):
    # The failed creator unlinks its lock file while holding it; a process
    # that was already waiting on that inode must not take a lock that no
    # longer guards the path (two writers): it re-checks and locks the new file.
    """A hostile pass over the index, its files and the CLI found this."""
    import fcntl
    import time

    from diskhash._fs import files as _files

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
            DiskHashIndex(path, timeout=0, exclusive=True)
    finally:
        child.stdin.close()
        assert child.wait(timeout=60) == 0
        child.stdout.close()


@pytest.mark.parametrize("readonly", [False, True])
@pytest.mark.parametrize("kind", ["fifo", "/dev/null", "/dev/zero"])
def test_an_odd_file_in_the_lock_files_place_is_named(small_index, kind, readonly):
    # A FIFO gave a bare "[Errno 29] Illegal seek", /dev/null a bare
    # "[Errno 19] No such device" (from mmap), neither naming a file;
    # a reader could even lock /dev/null.
    """A hostile pass over the index, its files and the CLI found this."""
    r = subprocess.run([sys.executable, "-c", LOCK_IN_PLACE, str(small_index), kind,
                        "1" if readonly else "0"], check=False, capture_output=True,
                       text=True, timeout=60, env=subprocess_env())
    assert r.returncode == 0, r.stderr
    errno_, filename, message = r.stdout.strip().split(" ", 2)
    assert int(errno_) == 22
    assert filename == f"{small_index}.lock"
    assert "lock file is a" in message and "not a regular file" in message


@pytest.mark.parametrize("bad,error", [(float("nan"), ValueError), (-1, ValueError),
                                       (-math.inf, ValueError), ("1", TypeError),
                                       (True, TypeError), (b"", TypeError)])
def test_timeout_must_be_seconds(index_path, bad, error):
    """A hostile pass found this: every call keeps its contract."""
    with pytest.raises(error, match="timeout"):
        DiskHashIndex(index_path, timeout=bad)
    assert not os.path.exists(str(index_path) + ".lock")


def test_infinite_timeout_waits_like_none(index_path):
    """A hostile pass found this: every call keeps its contract."""
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1))
    opened = []

    def second():
        with DiskHashIndex(index_path, timeout=math.inf) as other:
            opened.append(other[1])

    with DiskHashIndex(index_path, exclusive=True):
        t = threading.Thread(target=second)
        t.start()
        t.join(0.2)
        assert t.is_alive() and not opened     # still waiting for the lock
    t.join(10)
    assert opened == [rec(1)]
