"""One DiskHashIndex opened by several processes at once (the default, shared
mode): writes take turns on the lock file's robust mutex, reads are
optimistic (a seqlock) and re-map a table another process grew; a killed
writer is recovered by the next; fork keeps an inherited index disabled.
Every test runs real processes, each under a timeout."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.processes import finish, subprocess_env
from helpers.processes import spawn_python as spawn

from diskhash import DiskHashIndex, IndexClosedError, IndexLockedError, PayloadMeta
from diskhash._format.sochidx2 import SHARED_AT, UNDO_OFFSET

CHILD_TIMEOUT = 120

# Records carry their key and a version, and a check value tying the two, so a
# reader can tell a torn, mixed or foreign record from a right one.
PRELUDE = r"""
import os, random, sys, time
from diskhash import DiskHashIndex, PayloadMeta

def rec(key, version):
    return PayloadMeta(key, version, (key * 7 + version) & 0xFFFF, 0, (key ^ (version * 2654435761)) & 0xFFFFFFFF)

def check(key, meta):
    version = meta.offset
    if meta != rec(key, version):
        raise SystemExit(f"BAD key={key} {meta!r}")
    return version
"""

WRITER = PRELUDE + r"""
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with DiskHashIndex(path, timeout=30) as idx:
    for k in range(first, first + count):
        idx.insert(k, rec(k, 1))
        if k % 97 == 0:
            idx.delete(k)
    print("done", flush=True)
"""


def rec(key: int, version: int) -> PayloadMeta:
    return PayloadMeta(key, version, (key * 7 + version) & 0xFFFF, 0,
                       (key ^ (version * 2654435761)) & 0xFFFFFFFF)


def test_two_writer_processes_interleave_inserts_with_grows(index_path):
    with DiskHashIndex(index_path):
        pass
    n = 9000                               # each writer grows the table past 4096 slots
    a = spawn(WRITER, index_path, 0, n)
    b = spawn(WRITER, index_path, 10**6, n)
    assert finish(a) == finish(b) == "done\n"
    with DiskHashIndex(index_path, exclusive=True) as idx:
        expected = {k for base in (0, 10**6) for k in range(base, base + n) if k % 97}
        assert len(idx) == len(expected)
        for k in expected:
            assert idx[k] == rec(k, 1)
        idx.verify()


READER = PRELUDE + r"""
path, seconds, keys = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
import numpy as np
reads = found = 0
with DiskHashIndex(path, readonly=True, timeout=30) as idx:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        k = random.randrange(keys)
        meta = idx.get(k)
        reads += 1
        if meta is not None:
            check(k, meta)
            found += 1
        if reads % 50 == 0:
            batch = np.array(random.sample(range(keys), 64), dtype=np.uint64)
            rows = idx.get_many(batch)
            for key, row in zip(batch.tolist(), rows):
                if row["found"]:
                    check(key, PayloadMeta(key, int(row["offset"]), int(row["length"]),
                                           int(row["compression"]), int(row["uncompressed_length"])))
        if reads % 500 == 0:
            n = len(idx)
            if not 0 <= n < 1 << 40:          # (other writers' keys count too)
                raise SystemExit(f"BAD len {n}")
print(reads, found, flush=True)
"""

CHURN = PRELUDE + r"""
path, seconds, keys = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
version = 2
with DiskHashIndex(path, timeout=30) as idx:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        k = random.randrange(keys)
        r = random.random()
        if r < 0.15:
            idx.delete(k)
        else:
            idx.insert(k, rec(k, version))
        version += 1
    print("done", flush=True)
"""


def test_readers_in_other_processes_see_only_whole_records_while_a_writer_churns(index_path):
    keys = 20000                           # the churn grows the table several times
    with DiskHashIndex(index_path) as idx:
        for k in range(0, 2000):
            idx.insert(k, rec(k, 1))
    readers = [spawn(READER, index_path, 3, keys) for _ in range(2)]
    writer = spawn(CHURN, index_path, 3, keys)
    assert finish(writer) == "done\n"
    for proc in readers:
        reads, found = map(int, finish(proc).split())
        assert reads > 100 and found > 0
    with DiskHashIndex(index_path) as idx:
        idx.verify()
        assert idx.num_slots > 4096


def test_a_read_that_starts_after_another_process_wrote_sees_the_write(index_path):
    with DiskHashIndex(index_path) as mine, DiskHashIndex(index_path, readonly=True) as reader:
        mine.insert(1, rec(1, 1))
        script = PRELUDE + r"""
with DiskHashIndex(sys.argv[1]) as idx:
    assert idx[1] == rec(1, 1)            # the parent's write, before its close
    idx.insert(1, rec(1, 2))              # overwrite
    idx.insert(2, rec(2, 1))
    for k in range(10, 5000):             # a grow: the parent must re-map
        idx.insert(k, rec(k, 1))
    idx.delete(10)
print("ok", flush=True)
"""
        assert finish(spawn(script, index_path)) == "ok\n"
        for idx in (mine, reader):
            assert idx[1] == rec(1, 2) and idx[2] == rec(2, 1)
            assert 10 not in idx and idx[4999] == rec(4999, 1)
            assert len(idx) == 2 + 4989
        assert mine.num_slots == reader.num_slots == 8192
        mine.insert(3, rec(3, 1))          # the parent's writer goes on in the new file
        assert reader[3] == rec(3, 1)
        mine.verify()


ACKER = PRELUDE + r"""
path, first = sys.argv[1], int(sys.argv[2])
idx = DiskHashIndex(path, timeout=30)
print("open", flush=True)
k = first
while True:
    idx.insert(k, rec(k, 1))
    if k % 5 == 0:
        idx.insert(k, rec(k, 2))          # an overwrite (the undo page)
    if k % 7 == 0 and k - 3 >= first:
        idx.delete(k - 3)
    print(k, flush=True)                  # acknowledged: everything up to k returned
    k += 1
"""


def expected_after(first: int, last: int) -> dict[int, PayloadMeta]:
    want = {}
    for k in range(first, last + 1):
        want[k] = rec(k, 2 if k % 5 == 0 else 1)
        if k % 7 == 0 and k - 3 >= first:
            want.pop(k - 3, None)
    return want


def kill_writers_at_random(index_path, rounds: int, rng: random.Random) -> None:
    """SIGKILL a writer ``rounds`` times at random moments while a second
    writer and a reader run; every acknowledged write must survive."""
    with DiskHashIndex(index_path):
        pass
    other = spawn(ACKER, index_path, 10**7)
    reader = spawn(READER, index_path, 10**9, 10**5)     # runs until killed
    assert other.stdout.readline() == "open\n"
    acked: dict[int, int] = {}                             # first key -> last acknowledged
    first = 0
    try:
        for _ in range(rounds):
            victim = spawn(ACKER, index_path, first)
            assert victim.stdout.readline() == "open\n"
            time.sleep(rng.uniform(0.0, 0.2))
            victim.send_signal(signal.SIGKILL)
            out, _ = victim.communicate(timeout=CHILD_TIMEOUT)
            lines = out.split()
            if lines and lines[-1] != "open":
                acked[first] = int(lines[-1])
            first += 10**5
            assert reader.poll() is None, reader.communicate()
        other.send_signal(signal.SIGTERM)
        out, _ = other.communicate(timeout=CHILD_TIMEOUT)
        acked[10**7] = int(out.split()[-1])
        reader.send_signal(signal.SIGTERM)
        reader.communicate(timeout=CHILD_TIMEOUT)
        assert reader.returncode == -signal.SIGTERM        # it was reading, never failed
    finally:
        for proc in (other, reader):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    with DiskHashIndex(index_path) as idx:
        for start, last in acked.items():
            # The step after the last acknowledged one may have begun: its
            # delete of (last + 1) - 3 may or may not have happened.
            maybe_gone = last - 2 if (last + 1) % 7 == 0 else None
            for k, meta in expected_after(start, last).items():
                got = idx.get(k)
                assert got == meta or (k == maybe_gone and got is None), (k, got, meta)
        idx.verify()


def test_writers_killed_mid_write_lose_nothing_acknowledged(index_path):
    kill_writers_at_random(index_path, 3, random.Random(17))


@pytest.mark.slow
def test_two_hundred_writers_killed_mid_write_lose_nothing_acknowledged(index_path):
    kill_writers_at_random(index_path, 200, random.Random(1717))


# A writer that dies holding the cross-process mutex in the middle of a slot
# change: it takes the mutex and makes the seqlock odd through the mapped
# page (as a killed insert would leave them), then SIGKILLs itself.
DIE_HOLDING = r"""
import ctypes, mmap, os, signal, sys
path, undo_offset, shared_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path + ".lock", os.O_RDWR)
page = mmap.mmap(fd, 256, offset=undo_offset)
libc = ctypes.CDLL(None, use_errno=True)
base = ctypes.addressof(ctypes.c_char.from_buffer(page))
assert libc.pthread_mutex_lock(ctypes.c_void_p(base + shared_at + 64)) == 0
seq = ctypes.c_uint64.from_address(base + shared_at + 8)
seq.value += 1
ctypes.c_uint64.from_address(base + shared_at + 32).value = os.getpid()
os.kill(os.getpid(), signal.SIGKILL)
"""


def die_holding_the_writer_lock(index_path) -> None:
    r = subprocess.run([sys.executable, "-c", DIE_HOLDING, str(index_path), str(UNDO_OFFSET),
                        str(SHARED_AT)], capture_output=True, text=True, timeout=CHILD_TIMEOUT,
                       env=subprocess_env())
    assert r.returncode == -signal.SIGKILL, r.stderr


def shared_seq(index_path) -> int:
    with open(str(index_path) + ".lock", "rb") as f:
        f.seek(UNDO_OFFSET + SHARED_AT + 8)
        return int.from_bytes(f.read(8), "little")


def test_a_writer_killed_holding_the_lock_is_recovered_by_the_next_writer(index_path):
    with DiskHashIndex(index_path) as keeper:      # keeps the index open: no quiet reopen
        keeper.insert(1, rec(1, 1))
        die_holding_the_writer_lock(index_path)
        assert shared_seq(index_path) % 2 == 1
        with DiskHashIndex(index_path, readonly=True, timeout=0.3) as reader:
            t0 = time.monotonic()
            with pytest.raises(IndexLockedError, match="died while changing the index"):
                reader.get(1)
            assert time.monotonic() - t0 < 10
            keeper.insert(2, rec(2, 1))           # EOWNERDEAD: recovers, then writes
            assert shared_seq(index_path) % 2 == 0
            assert reader[1] == rec(1, 1) and reader[2] == rec(2, 1)
        keeper.verify()


def test_a_writable_reader_recovers_a_killed_writer_itself(index_path):
    with DiskHashIndex(index_path) as keeper:
        keeper.insert(1, rec(1, 1))
        die_holding_the_writer_lock(index_path)
        assert keeper.get(1) == rec(1, 1)         # waits out the patience, recovers, reads
        assert shared_seq(index_path) % 2 == 0
        keeper.insert(2, rec(2, 1))
        assert len(keeper) == 2


def test_a_quiet_open_resets_a_lock_left_by_a_killed_writer(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1, 1))
    die_holding_the_writer_lock(index_path)
    with DiskHashIndex(index_path) as idx:        # alone: recounts, fresh mutex
        assert shared_seq(index_path) % 2 == 0
        idx.insert(2, rec(2, 1))
        assert len(idx) == 2 and idx[1] == rec(1, 1)
        idx.verify()


GET_LOOP = r"""
import sys
from diskhash import DiskHashIndex
with DiskHashIndex(sys.argv[1], readonly=True) as idx:
    print("reading", flush=True)
    while True:
        idx.get_many(list(range(5000)))
"""


def test_a_reader_killed_mid_read_changes_nothing(index_path):
    with DiskHashIndex(index_path) as idx:
        for k in range(3000):
            idx.insert(k, rec(k, 1))
        lock_path = Path(str(index_path) + ".lock")
        before, lock_before = index_path.read_bytes(), lock_path.read_bytes()
        for _ in range(3):
            proc = spawn(GET_LOOP, index_path)
            assert proc.stdout.readline() == "reading\n"
            time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=CHILD_TIMEOUT)
        assert index_path.read_bytes() == before and lock_path.read_bytes() == lock_before
        idx.insert(5000, rec(5000, 1))          # the writer lock is free
        idx.verify()


def test_fork_disables_the_inherited_shared_index_and_the_child_opens_its_own(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1, 1))
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            status = 1
            try:
                try:
                    idx.insert(2, rec(2, 1))
                except IndexClosedError as exc:
                    assert "fork" in str(exc)
                with DiskHashIndex(index_path) as own:     # a new open shares with the parent
                    assert own[1] == rec(1, 1)
                    own.insert(3, rec(3, 1))
                status = 0
            finally:
                os.write(wfd, b"x")
                os._exit(status)
        os.close(wfd)
        os.read(rfd, 1)
        os.close(rfd)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert 2 not in idx and idx[3] == rec(3, 1)       # the child's own open wrote
        idx.insert(4, rec(4, 1))                          # the parent's lock still works
        assert len(idx) == 3
        idx.verify()


def test_writing_block_holds_the_lock_across_calls_and_processes(index_path):
    script = PRELUDE + r"""
with DiskHashIndex(sys.argv[1], timeout=30) as idx:
    print("open", flush=True)
    t0 = time.monotonic()
    idx.insert(50, rec(50, 1))
    print(f"{time.monotonic() - t0:.3f}", flush=True)
"""
    with DiskHashIndex(index_path) as idx:
        with idx.writing():
            proc = spawn(script, index_path)
            assert proc.stdout.readline() == "open\n"
            idx.insert(1, rec(1, 1))
            with idx.writing():                # re-entrant
                idx.insert(2, rec(2, 1))
            time.sleep(0.5)
            assert 50 not in idx               # the other process waits for the block
        waited = float(finish(proc))
        assert waited >= 0.3
        assert idx[50] == rec(50, 1)


def test_an_index_open_in_one_process_shares_one_lock_page(index_path):
    """The shared page sits after the undo record, in the lock file's undo
    page, and is made once (magic), with an even seqlock after a clean close."""
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1, 1))
    with open(str(index_path) + ".lock", "rb") as f:
        page = mmap.mmap(f.fileno(), 256, offset=UNDO_OFFSET, access=mmap.ACCESS_READ)
        try:
            magic = bytes(page[SHARED_AT:SHARED_AT + 8])
            seq = ctypes.c_uint64.from_buffer_copy(page[SHARED_AT + 8:SHARED_AT + 16]).value
        finally:
            page.close()
    assert magic == b"DSKHSHR1"
    assert seq % 2 == 0 and seq > 0


# -- the replaced table's map is closed off the calling thread ---------------

GROWER = PRELUDE + r"""
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with DiskHashIndex(path, timeout=30) as idx:
    slots = idx.num_slots
    for k in range(first, first + count):
        idx.insert(k, rec(k, 1))
    assert idx.num_slots > slots
    print("grown", flush=True)
"""


def _deleted_table_closes(monkeypatch, table: str) -> list:
    """Patch ``os.close`` to record, for each descriptor of ``table``'s
    replaced (unlinked) file, the thread that closes it."""
    closes: list = []
    real = os.close

    def close(fd: int) -> None:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if target == f"{os.path.realpath(table)} (deleted)":
            closes.append(threading.get_ident())
        real(fd)
    monkeypatch.setattr(os, "close", close)
    return closes


def _maps_of_deleted(table: str) -> list:
    with open("/proc/self/maps") as f:
        return [line for line in f if f"{os.path.realpath(table)} (deleted)" in line]


def test_a_read_that_remaps_leaves_closing_the_old_table_to_another_thread(index_path, monkeypatch):
    # Freeing a replaced table (its page cache, its blocks) falls on its last
    # holder, often a reader process's re-map: on an event loop that was tens
    # of ms of stall (docs/performance.md).  The read hands it to a thread.
    idx = DiskHashIndex(index_path)
    try:
        idx.insert(1, rec(1, 1))
        slots = idx.num_slots
        assert finish(spawn(GROWER, index_path, 10, 5000)).strip() == "grown"
        closes = _deleted_table_closes(monkeypatch, index_path)
        assert idx.get(1) == rec(1, 1)             # re-maps the grown table
        assert idx.num_slots > slots and idx.get(4000) == rec(4000, 1)
    finally:
        idx.close()                                # waits for the old map to be closed
    assert closes and threading.get_ident() not in closes, closes
    assert _maps_of_deleted(index_path) == []


def test_a_grow_leaves_closing_the_old_table_to_another_thread_and_close_waits_for_it(index_path,
                                                                                         monkeypatch):
    # The grower frees the old table outside its writer lock; close() waits,
    # so a closed index maps and holds nothing of it.
    closes = _deleted_table_closes(monkeypatch, index_path)
    with DiskHashIndex(index_path) as idx:
        slots = idx.num_slots
        for k in range(5000):
            idx.insert(k, rec(k, 1))
        assert idx.num_slots > slots
    assert closes and threading.get_ident() not in closes, closes
    assert _maps_of_deleted(index_path) == []
    with DiskHashIndex(index_path, readonly=True) as idx:
        assert all(idx.get(k) == rec(k, 1) for k in range(5000))
