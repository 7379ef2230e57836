"""What the attack pass on the shared PayloadStore (issue 17) broke: each
test reproduces one finding with real processes under a timeout.  Where a
race decides, the child running the read opens the window itself (it runs
another process's ``compact()`` between two of its own steps), so the test
fails the same way every time without the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.processes import finish
from helpers.processes import spawn_python as spawn
from helpers.processes import versioned_payload as payload

from diskhash import PayloadStore

CHILD_TIMEOUT = 120

PRELUDE = r"""
import os, subprocess, sys, time
from diskhash import PayloadStore

def payload(key, version, size=200):
    head = b"%d:%d:" % (key, version)
    return head + bytes([(key + version) & 0xFF]) * (size - len(head))

COMPACTOR = ("import sys\nfrom diskhash import PayloadStore\ns = PayloadStore(sys.argv[1])\n"
             "print('open', flush=True)\nfor line in sys.stdin:\n    s.compact()\n"
             "    print('done', flush=True)\ns.close()\n")
_compactor = None

def compact_elsewhere(path):
    # another process's compact(): a new generation, the old files deleted.
    # (That process opened the store before this one: an open holds the
    # create lock while it reads the MANIFEST, which another open would wait for.)
    global _compactor
    if _compactor is None:
        start_compactor(path)
    _compactor.stdin.write("compact\n")
    _compactor.stdin.flush()
    assert _compactor.stdout.readline().strip() == "done"

def start_compactor(path):
    global _compactor
    _compactor = subprocess.Popen([sys.executable, "-c", COMPACTOR, path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
    assert _compactor.stdout.readline().strip() == "open"
"""


def run(script: str, *args: object) -> str:
    return finish(spawn(script, *args), CHILD_TIMEOUT)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with PayloadStore(path) as s:
        s.put_many(list(range(50)), [payload(k, 1) for k in range(50)])
    return path


@pytest.fixture
def idle_writer(store_path: Path):
    """A writable open of another process that stays open (the shared page
    stays live: opens beside it attach, closes of others are not the last)."""
    proc = spawn(PRELUDE + "s = PayloadStore(sys.argv[1])\nprint('open', flush=True)\n"
                 "sys.stdin.readline()\ns.close()\n", store_path)
    assert proc.stdout.readline().strip() == "open"
    yield proc
    out, err = proc.communicate("\n", timeout=CHILD_TIMEOUT)
    assert proc.returncode == 0, err


def test_read_only_verify_while_another_process_writes_a_frame(store_path, idle_writer):
    """``verify()`` of a read-only store scanned the data file to its size:
    a frame another process is writing (its CRC not yet stored) followed by
    the bytes after it read as a "torn tail" -- a ``CorruptPayloadError``
    for an intact store.  Fixed in ``Writer.data_end``
    (diskhash/_store/writer.py): a read-only open beside live writers scans
    to the log's end they last published on the shared page."""
    script = PRELUDE + r"""
from diskhash._format import payload as fmt
s = PayloadStore(sys.argv[1])
with s.writing():
    g = s._writer.gen
    at = s._writer.end
    torn = fmt.FRAME.pack(0, fmt.KIND_PUT, 0, fmt.FRAME_MARK, 300, 300, 7, 0)
    os.pwrite(g.fd, torn + b"x" * 300, at)     # header and payload, the CRC not yet
    print("writing", flush=True)
    time.sleep(600)
"""
    writer = spawn(script, store_path)
    try:
        assert writer.stdout.readline().strip() == "writing"
        run(PRELUDE + r"""
with PayloadStore(sys.argv[1], readonly=True) as r:
    r.verify()
    assert r.get(3) == payload(3, 1)
""", store_path)
    finally:
        writer.kill()
        writer.communicate()
    with PayloadStore(store_path) as s:         # the next writer zeroes the torn frame
        s.put(100, b"after")
        s.verify()
        assert [s.get(k) for k in range(50)] == [payload(k, 1) for k in range(50)]


def test_read_only_stats_while_another_process_compacts(store_path, idle_writer):
    """``stats()`` of a read-only store raised ``FileNotFoundError`` when
    another process's ``compact()`` had deleted the index file it sizes: the
    compactor deletes the old files before it bumps the page's count, so the
    reader had not followed yet and its retry did not fire.  Fixed:
    ``Sharing.moved_on`` (diskhash/_store/sharing.py) reads the MANIFEST again
    and follows it; ``stats()`` then retries."""
    run(PRELUDE + r"""
import diskhash._store.store as store_mod
path = sys.argv[1]
r = PayloadStore(path, readonly=True)
real = store_mod.stats_of
def stats_of(g, size, checkpoint):
    store_mod.stats_of = real
    compact_elsewhere(path)     # between the generation's pick and its files' read
    r._writer.sharing.page.seen = r._writer.sharing.page.seq  # (as if the count were not bumped yet)
    return real(g, size, checkpoint)
store_mod.stats_of = stats_of
st = r.stats()
assert st.entries == 50 and st.data_generation == 2, st
assert r.get(7) == payload(7, 1)
r.close()
""", store_path)


@pytest.mark.parametrize("readonly", [True, False])
def test_an_open_racing_another_process_compact(store_path, idle_writer, readonly):
    """An open read the MANIFEST, then another process's ``compact()``
    switched generations and deleted the files it named: the open raised
    ``FileNotFoundError`` (the index) or ``CorruptPayloadError`` telling the
    user to put the MANIFEST back.  Fixed: ``recovery.switching``
    (diskhash/_store/recovery.py) opens again when the MANIFEST moved on."""
    run(PRELUDE + r"""
from diskhash._store.generation import StoreDirectory
path, readonly = sys.argv[1], sys.argv[2] == "True"
start_compactor(path)
real = StoreDirectory.read_manifest
def read_manifest(self):
    got = real(self)
    if sys._getframe(1).f_code.co_name in ("open_readonly", "open_attached"):
        StoreDirectory.read_manifest = real
        compact_elsewhere(path)     # after the open's read, before it opens the files
    return got
StoreDirectory.read_manifest = read_manifest
with PayloadStore(path, readonly=readonly, timeout=30) as s:
    assert StoreDirectory.read_manifest is real
    assert s.stats().data_generation == 2
    assert [s.get(k) for k in range(50)] == [payload(k, 1) for k in range(50)]
""", store_path, readonly)


def test_a_reader_following_a_generation_that_is_switched_again(store_path, idle_writer):
    """A reader following one ``compact()`` (the count moved) read the
    MANIFEST, then a second ``compact()`` deleted that generation before the
    reader opened it: ``CorruptPayloadError`` ("the MANIFEST names data
    generation 2 ... but data-000002.dat is missing"), which ``follow`` did
    not retry (it retried only ``FileNotFoundError``, and only when the count
    had moved again).  Fixed in ``Sharing.follow`` (diskhash/_store/sharing.py)."""
    run(PRELUDE + r"""
from diskhash._store.generation import StoreDirectory
path = sys.argv[1]
r = PayloadStore(path, readonly=True)
assert r.get(1) == payload(1, 1)
compact_elsewhere(path)                 # generation 2: the reader's count moves
real = StoreDirectory.read_manifest
def read_manifest(self):
    StoreDirectory.read_manifest = real
    got = real(self)
    compact_elsewhere(path)             # generation 3, 2 deleted, before the reader opens 2
    return got
StoreDirectory.read_manifest = read_manifest
assert [r.get(k) for k in range(50)] == [payload(k, 1) for k in range(50)]
assert r.stats().data_generation == 3
r.close()
""", store_path)


def test_compact_waiting_for_close_in_another_thread(store_path):
    """``compact()`` that waited for this process's maintenance lock while
    ``close()`` held it went on to lock store.lock's closed descriptor:
    ``ValueError: file descriptor cannot be a negative integer (-1)``
    instead of ``IndexClosedError``.  Fixed: ``Lifetime.hold_maintenance``
    (diskhash/_store/lifetime.py) checks the store is still open once the
    in-process lock is held."""
    run(PRELUDE + r"""
import threading
from diskhash import IndexClosedError
s = PayloadStore(sys.argv[1])
m = s._life.maintenance
errors = []
def call(fn):
    try:
        fn()
    except IndexClosedError:
        pass
    except BaseException as exc:
        errors.append(repr(exc))
threads = []
with m:                                 # the order: close() first, then compact()
    for fn in (s.close, s.compact, s.rebuild_index):
        before = m._next
        t = threading.Thread(target=call, args=(fn,))
        t.start()
        while m._next == before:        # (its ticket taken: it waits in line)
            time.sleep(0.001)
        threads.append(t)
for t in threads:
    t.join(30)
    assert not t.is_alive()
assert not errors, errors
assert s.closed
""", store_path)
    with PayloadStore(store_path) as s:
        s.verify()
        assert len(s) == 50
