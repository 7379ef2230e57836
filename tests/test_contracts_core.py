"""Every call keeps its contract (issue 9, defects 1-7 and the stray lock
files of defect 10): no crash, no hang, one writer per file whatever the
path, honest errors.  Crash and hang checks run in a subprocess with a timeout."""

from __future__ import annotations

import errno
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading

import pytest
from helpers.crafted import FOREIGN_SELF, long_run_table
from helpers.processes import run_child

from diskhash import (
    CorruptIndexError,
    DiskHashIndex,
    IndexClosedError,
    IndexLockedError,
    PayloadMeta,
)
from diskhash._index import MAX_CAPACITY


def rec(key: int) -> PayloadMeta:
    return PayloadMeta(key, key * 3, 11, 1, 22)


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


# -- 1. a foreign self is a TypeError, never a crash ------------------------------

def test_foreign_self_raises_type_error_for_every_callable_of_every_extension_type():
    r = run_child(FOREIGN_SELF, timeout=120)
    assert r.returncode == 0, f"child died ({r.returncode}): {r.stdout[-2000:]} {r.stderr[-2000:]}"
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert fails == []
    types = next(line for line in r.stdout.splitlines() if line.startswith("types")).split()[1:]
    assert "diskhash._index.DiskHashIndex" in types and "diskhash._index._Chunk" in types
    checked = int(r.stdout.split("checked ")[-1])
    assert checked > 2000          # every method, property and slot, with every foreign self


REPORTED_CALLS = r"""
from diskhash import DiskHashIndex
calls = {
    "get": lambda: DiskHashIndex.get("x", 1),
    "close": lambda: DiskHashIndex.close(object()),
    "delete": lambda: DiskHashIndex.delete(1, 2),
    "pop": lambda: DiskHashIndex.pop(None, 1),
    "reserve": lambda: DiskHashIndex.reserve(object(), 10),
    "_create": lambda: DiskHashIndex._create(object(), 4096),
    "_open_file": lambda: DiskHashIndex._open_file(object(), None),
    "_scan": lambda: DiskHashIndex._scan(object(), 0),
    "_release_resources": lambda: DiskHashIndex._release_resources(object(), True),
    "__len__": lambda: DiskHashIndex.__len__(object()),
    "closed": lambda: DiskHashIndex.closed.__get__(object()),
}
for name, call in calls.items():
    if not hasattr(DiskHashIndex, name):
        print(name, "not callable from Python")    # the helpers became C functions
        continue
    try:
        call()
    except TypeError as exc:
        print(name, "TypeError", "descriptor" in str(exc) or "requires" in str(exc))
"""


def test_the_reported_foreign_self_calls_raise_the_descriptor_type_error():
    r = run_child(REPORTED_CALLS, timeout=60)
    assert r.returncode == 0, f"child died ({r.returncode}): {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    assert len(lines) == 11, lines
    for line in lines:
        name = line.split()[0]
        ok = line.endswith(" TypeError True") or (
            name.startswith("_") and line.endswith("not callable from Python"))
        assert ok, line


# -- 2. negative exact ints are OverflowError on every CPython (3.13 included) -----

@pytest.mark.parametrize("key", [-1, -(2**64), -(2**200)])
def test_negative_keys_raise_overflow_error_everywhere(index_path, key):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1))
        for op in (idx.get, idx.__getitem__, idx.__contains__, idx.delete, idx.pop,
                   idx.__delitem__, lambda k: idx.insert(k, (k, 1, 2, 0, 3))):
            with pytest.raises(OverflowError, match="outside"):
                op(key)
        assert len(idx) == 1 and idx[1] == rec(1)


@pytest.mark.parametrize("field,index", [("edge_id", 0), ("offset", 1), ("length", 2),
                                         ("uncompressed_length", 4)])
@pytest.mark.parametrize("value", [-1, -(2**40), -(2**70)])
def test_negative_record_fields_raise_overflow_error(field, index, value):
    args = [5, 1, 2, 0, 3]
    args[index] = value
    with pytest.raises(OverflowError):
        PayloadMeta(*args)
    with pytest.raises(OverflowError):
        PayloadMeta(**dict(zip(PayloadMeta._fields, args)))


# -- 3. sizes: a clear error at once, never a hang or a silent 4096 ------------------

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
    path = tmp_path / "big.idx"
    r = run_child(HUGE_CAPACITY, path, how, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "ACCEPTED" not in r.stdout and r.stdout.count("refused") == 6
    assert "slots 4096 entries 0" in r.stdout          # the index is unchanged


def test_a_capacity_the_disk_cannot_hold_is_an_os_error(tmp_path):
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
    if bad is not None:
        with pytest.raises(TypeError, match="capacity must be an int"):
            DiskHashIndex(index_path, capacity=bad)
    with DiskHashIndex(index_path) as idx:
        with pytest.raises(TypeError, match="capacity must be an int"):
            idx.reserve(bad)
        assert idx.num_slots == 4096


def test_capacity_accepts_index_types(index_path):
    np = pytest.importorskip("numpy")
    with DiskHashIndex(index_path, capacity=np.int64(5000)) as idx:
        assert idx.num_slots == 8192
        idx.reserve(np.uint32(7000))
        assert idx.num_slots == 16384


@pytest.mark.parametrize("bad,error", [(float("nan"), ValueError), (-1, ValueError),
                                       (-math.inf, ValueError), ("1", TypeError),
                                       (True, TypeError), (b"", TypeError)])
def test_timeout_must_be_seconds(index_path, bad, error):
    with pytest.raises(error, match="timeout"):
        DiskHashIndex(index_path, timeout=bad)
    assert not os.path.exists(str(index_path) + ".lock")


def test_infinite_timeout_waits_like_none(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(1, rec(1))
    opened = []

    def second():
        with DiskHashIndex(index_path, timeout=math.inf) as other:
            opened.append(other[1])

    with DiskHashIndex(index_path):
        t = threading.Thread(target=second)
        t.start()
        t.join(0.2)
        assert t.is_alive() and not opened     # still waiting for the lock
    t.join(10)
    assert opened == [rec(1)]


# -- 4. one writer per file, whatever the path ------------------------------------

def test_a_symlink_shares_the_targets_lock(tmp_path):
    real, link = tmp_path / "real.idx", tmp_path / "link.idx"
    os.symlink("real.idx", link)
    with DiskHashIndex(real) as idx:
        idx.insert(1, rec(1))
        for readonly in (False, True):
            with pytest.raises(IndexLockedError) as info:
                DiskHashIndex(link, readonly=readonly)
            assert str(link) in str(info.value)
    with DiskHashIndex(link, readonly=True) as a, DiskHashIndex(real, readonly=True) as b:
        assert a[1] == b[1] == rec(1)
    assert listing(tmp_path) == ["link.idx", "real.idx", "real.idx.lock"]


def test_a_grow_through_a_symlink_replaces_the_target_not_the_link(tmp_path):
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
    link = tmp_path / "link.idx"
    os.symlink(tmp_path / "nowhere.idx", link)
    with pytest.raises(FileNotFoundError):
        DiskHashIndex(link, readonly=True)
    assert listing(tmp_path) == ["link.idx"]


def test_a_hard_link_shares_one_writer(tmp_path):
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
        # now on (documented in docs/files-and-locks.md).
        for k in range(2, 4000):
            idx.insert(k, rec(k))
        assert idx.num_slots == 8192
        with DiskHashIndex(b, readonly=True) as old:
            assert len(old) == 3072 and old.num_slots == 4096 and 3999 not in old
            old.verify()
    assert os.stat(a).st_ino != os.stat(b).st_ino


def test_hard_link_readers_share(tmp_path):
    a, b = tmp_path / "a.idx", tmp_path / "b.idx"
    with DiskHashIndex(a) as idx:
        idx.insert(1, rec(1))
    os.link(a, b)
    with DiskHashIndex(a, readonly=True) as x, DiskHashIndex(b, readonly=True) as y:
        assert x[1] == y[1] == rec(1)


# -- 5. odd files: no hang, linear and interruptible scans ---------------------------

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
    fifo = tmp_path / "pipe.idx"
    os.mkfifo(fifo)
    r = run_child(FIFO_OPEN, fifo, mode, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused OSError") and "a FIFO, not an index file" in r.stdout
    assert str(fifo) in r.stdout
    assert listing(tmp_path) == ["pipe.idx"]


LONG_RUN = r"""
import sys, time
from diskhash import DiskHashIndex
path, what = sys.argv[1], sys.argv[2]
t0 = time.monotonic()
if what == "verify":
    with DiskHashIndex(path, readonly=True) as idx:
        idx.verify()
        print("entries", len(idx), "longest", idx.stats().longest_probe)
else:                     # a writable open without the clean marker: the heal scan
    with DiskHashIndex(path) as idx:
        print("entries", len(idx), "recovery", idx.recovery)
print("seconds", time.monotonic() - t0)
"""


@pytest.fixture(scope="module")
def long_run_file(tmp_path_factory):
    pytest.importorskip("numpy")
    path = tmp_path_factory.mktemp("longrun") / "run.idx"
    long_run_table(path, slots=2**20, entries=2**19, homes=2**16)
    return path


@pytest.mark.parametrize("what", ["verify", "heal"])
def test_one_long_run_is_scanned_in_linear_time(long_run_file, tmp_path, what):
    path = tmp_path / "run.idx"
    shutil.copyfile(long_run_file, path)
    # Quadratic, this took ~20 s on 2**18 slots and takes many minutes on
    # these 2**20; linear, it is milliseconds of scanning.
    r = run_child(LONG_RUN, path, what, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"entries {2**19}" in r.stdout
    if what == "verify":
        longest = int(r.stdout.split("longest ")[1].split()[0])
        assert longest > 2**18            # really one long run
    else:
        assert "recovery None" in r.stdout   # a valid file: nothing to heal


def test_duplicates_are_found_across_the_wrap(tmp_path):
    """The run that wraps from the last slot into slot 0 is checked as one run."""
    from diskhash._format import home_slot

    path = tmp_path / "wrap.idx"
    with DiskHashIndex(path) as idx:
        keys = [k for k in range(10**6) if home_slot(k, idx.seed, 4096) == 4095][:3]
        for k in keys:
            idx.insert(k, rec(k))
    data = bytearray(path.read_bytes())
    # keys[0] sits in slot 4095, keys[1] in 0, keys[2] in 1: make slot 1 a copy of keys[0].
    off0, off2 = 64 + 40 * 4095, 64 + 40 * 1
    data[off2:off2 + 40] = data[off0:off0 + 40]
    data[24:32] = (3).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    os.unlink(str(path) + ".lock")
    with DiskHashIndex(path, readonly=True) as idx, pytest.raises(CorruptIndexError) as info:
        idx.verify()
    assert info.value.defects == [f"slot 1: duplicate of key {keys[0]}"]
    with DiskHashIndex(path) as idx:     # the unclean open heals it
        assert idx.recovery is not None and len(idx) == 2
        idx.verify()


SIGINT_SCAN = r"""
import os, signal, sys, threading, time
from diskhash import DiskHashIndex
idx = DiskHashIndex(sys.argv[1], readonly=True)
# A child inherits an ignored SIGINT (a CI job started in the background by a
# shell without job control ignores it, and Python then leaves it ignored):
# Ctrl-C's handler is what this test needs, so install it.
signal.signal(signal.SIGINT, signal.default_int_handler)
def interrupt():
    time.sleep(0.3)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
threading.Thread(target=interrupt, daemon=True).start()
scans = 0
try:
    while True:
        idx.verify()
        scans += 1
except KeyboardInterrupt as exc:
    tb, inside = exc.__traceback__, False
    while tb is not None:
        inside |= tb.tb_frame.f_code.co_filename.endswith("_index.pyx")
        tb = tb.tb_next
    print("interrupted", "inside-scan" if inside else "between-scans", scans)
"""


def test_ctrl_c_interrupts_a_long_scan(long_run_file):
    # The signal lands while a scan runs (scans take all but microseconds of
    # the loop); KeyboardInterrupt must come out of the scan itself, which
    # Cython's traceback entry for _index.pyx shows.  A scan that never
    # checks would finish first and raise it between two scans.
    for _attempt in range(5):
        r = run_child(SIGINT_SCAN, long_run_file, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("interrupted"), r.stdout
        if "inside-scan" in r.stdout:
            return
    pytest.fail(f"KeyboardInterrupt never came from inside the scan: {r.stdout}")


# -- 6. a sparse file someone else wrote, on a full disk: OSError, not SIGBUS ----------

@pytest.fixture
def small_ext4():
    """A 20 MiB ext4 image mounted with -o loop (tmpfs hides sparse-file bugs)."""
    top = tempfile.mkdtemp(prefix="dh-ext4-")
    image, mnt = os.path.join(top, "img"), os.path.join(top, "mnt")
    os.mkdir(mnt)
    with open(image, "wb") as f:
        f.truncate(20 << 20)
    r = subprocess.run(["mkfs.ext4", "-q", "-F", image], check=False, capture_output=True, text=True)
    if r.returncode == 0:
        r = subprocess.run(["mount", "-o", "loop", image, mnt], check=False, capture_output=True,
                           text=True)
    if r.returncode != 0:
        shutil.rmtree(top)
        pytest.skip(f"cannot make and loop-mount an ext4 image here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)
        shutil.rmtree(top)


SPARSE_INSERT = r"""
import sys
from diskhash import DiskHashIndex
try:
    idx = DiskHashIndex(sys.argv[1])
except OSError as exc:
    print("refused", exc.errno, exc)
    raise SystemExit(0)
for k in range(20000):
    idx.insert(k, (k, k, 1, 0, 1))
print("inserted all")
"""


def test_sparse_index_on_a_full_disk_is_an_os_error_not_sigbus(small_ext4):
    path = os.path.join(small_ext4, "sparse.idx")
    with DiskHashIndex(path, capacity=12000) as idx:       # 16384 slots, 640 KiB
        slots, seed = idx.num_slots, idx.seed
    # Rewrite it as the Rust original would: header only, sized by ftruncate.
    with open(path, "rb") as f:
        header = f.read(64)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(64 + 40 * slots)
    assert os.stat(path).st_blocks * 512 < 64 + 40 * slots        # really sparse
    with open(os.path.join(small_ext4, "ballast"), "wb") as f:     # fill the disk
        chunk = b"\1" * (1 << 16)
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        try:
            while True:
                os.write(f.fileno(), b"\1" * 1024)
        except OSError:
            pass
    r = run_child(SPARSE_INSERT, path, timeout=60)
    assert r.returncode != -signal.SIGBUS, "killed by SIGBUS"
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"refused {errno.ENOSPC}"), r.stdout
    assert path in r.stdout and "allocating the blocks of the table" in r.stdout
    with open(path, "rb") as f:
        assert f.read(64) == header                                 # unchanged
    assert seed
    os.unlink(os.path.join(small_ext4, "ballast"))                  # room again: it opens
    with DiskHashIndex(path) as idx:
        idx.insert(1, rec(1))
        assert os.stat(path).st_blocks * 512 >= 64 + 40 * slots


# -- 7. stats() racing close() ------------------------------------------------------

def test_stats_racing_close_raises_index_closed_error(tmp_path):
    path = tmp_path / "race.idx"
    errors: list[BaseException] = []
    for trial in range(150):
        idx = DiskHashIndex(path)
        if trial == 0:
            for k in range(100):
                idx.insert(k, rec(k))
        started = threading.Event()

        def hammer(idx=idx, started=started):
            try:
                while True:
                    idx.stats()
                    started.set()
            except IndexClosedError:
                pass
            except Exception as exc:  # noqa: BLE001 - OSError(EBADF) here was the bug
                errors.append(exc)
            finally:
                started.set()

        t = threading.Thread(target=hammer)
        t.start()
        started.wait(10)
        idx.close()
        t.join(10)
        assert not t.is_alive()
    assert errors == []


# -- 10 (stray lock files): a failed open creates nothing --------------------------

def test_empty_path_is_refused_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for readonly in (False, True):
        with pytest.raises(ValueError, match="path is empty"):
            DiskHashIndex("", readonly=readonly)
    assert listing(tmp_path) == [] and listing(tmp_path.parent).count(tmp_path.name + ".lock") == 0


@pytest.mark.parametrize("readonly", [False, True], ids=["writable", "readonly"])
def test_opening_a_directory_or_a_non_index_file_creates_nothing(tmp_path, readonly):
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
    with pytest.raises(FileNotFoundError):
        DiskHashIndex(tmp_path / "sub" / "x.idx", readonly=True)
    assert listing(tmp_path) == []
