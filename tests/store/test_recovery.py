"""PayloadStore open and recovery: stray MANIFESTs, leftovers, torn tails that hold
frames, garbage lengths, power loss (point-in-time recovery), damage and rebuild.

Regressions of issue 20 (items 3, 4, 5, 9, 10 and the power-loss / rebuild gaps).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

from diskhash import CorruptPayloadError, DamagedRecordsError, PayloadStore, StoreRecovery
from diskhash._format import payload as fmt


def _files(directory):
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


def _frame(key, payload):
    body = fmt.pack_frame_body(fmt.KIND_PUT, 0, len(payload), len(payload), key) + payload
    return fmt.checksum(body).to_bytes(4, "little") + body


def _crash(store):
    """Drop a store the way a killed process would: no save, no clean header, no trim."""
    store._writer.gen.index.close()
    store._writer.gen = None
    store._life.lock.close()
    store._life.lock = None


# -- item 3: a MANIFEST naming a missing generation ---------------------------------

def test_manifest_naming_missing_generation_deletes_nothing(tmp_path):
    """A MANIFEST restored from during a compact() names generation 1; the files are
    generation 2.  The open used to delete data-000002.dat and its index as leftovers."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put_many(range(20), [b"v%d" % i for i in range(20)])
        s.compact()
        assert s.stats().data_generation == 2
    good_manifest = (d / "MANIFEST").read_bytes()
    (d / "MANIFEST").write_bytes(fmt.pack_manifest(1, 1))
    before = _files(d)
    for readonly in (False, True):
        with pytest.raises(CorruptPayloadError) as ei:
            PayloadStore(d, readonly=readonly)
        msg = str(ei.value)
        assert "data-000001.dat is missing" in msg and "data generation(s) 2" in msg
        assert "index generation(s) 2" in msg
        assert _files(d) == before                      # nothing deleted, nothing written
    (d / "MANIFEST").write_bytes(good_manifest)         # the right MANIFEST back: all is there
    with PayloadStore(d) as s:
        assert len(s) == 20 and s.get(7) == b"v7"


# -- item 4: only exact generation names are leftovers ------------------------------

def test_writable_open_removes_only_exact_generation_names(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
    mine = ["data-export.dat", "index-users.idx", ".notes.tmp", "data-1.dat", "data-0000001.dat",
            "index-000001.idx.bak", "data-000009.dat.tmp", ".MANIFEST.tmp", "index-000003.lock"]
    for name in mine:
        (d / name).write_bytes(b"user data")
    ours = ["data-000007.dat", "index-000007.idx", "index-000007.idx.lock", ".MANIFEST.123.tmp",
            ".index-000001.idx.grow-77-0badcafe.tmp"]
    for name in ours:
        (d / name).write_bytes(b"leftover")
    with PayloadStore(d) as s:
        assert s.get(1) == b"one"
        # (the index's own open clears its grow temporary first)
        assert s.recovery is not None and set(s.recovery.removed) >= set(ours[:4])
    for name in mine:
        assert (d / name).read_bytes() == b"user data"
    for name in ours:
        assert not (d / name).exists()


@pytest.mark.parametrize("name", ["data-000002.dat", "index-000002.idx", "index-000002.idx.lock",
                                  "data-000000.dat", ".MANIFEST.123.tmp"])
def test_a_directory_named_like_a_leftover_does_not_block_the_open(tmp_path, name):
    """A directory that merely has a generation file's (or a temporary's) name is
    not a leftover of ours -- the store only ever makes regular files.  The
    writable open tried to ``unlink`` it as a leftover and failed with
    ``IsADirectoryError`` every time: the store could not be opened for writing
    until a person removed it.  It is left alone (with its contents)."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
    (d / name).mkdir()
    (d / name / "keep").write_bytes(b"mine")
    with PayloadStore(d) as s:
        assert s.get(1) == b"one"
        s.put(2, b"two")
    with PayloadStore(d) as s:
        assert s.get(1) == b"one" and s.get(2) == b"two"
    assert (d / name / "keep").read_bytes() == b"mine"


def test_generation_file_names_are_exact():
    assert fmt.generation_file("data-000001.dat") == ("data", 1)
    assert fmt.generation_file("index-1234567.idx.lock") == ("index", 1234567)
    for name in ("data-export.dat", "data-0000001.dat", "data-000001.idx", "index-000001.dat",
                 "data-\u0661\u0662\u0663\u0664\u0665\u0666.dat", "data-000001.dat.bak"):
        assert fmt.generation_file(name) is None, name
    assert fmt.is_store_temporary(".MANIFEST.42.tmp")
    assert not fmt.is_store_temporary(".notes.tmp")


# -- item 5: a torn record whose payload holds frames ------------------------------

def _store_bytes(tmp_path):
    """Another store's data file: a payload full of valid frames."""
    other = tmp_path / "other"
    with PayloadStore(other) as o:
        for i in range(300):
            o.put(i, b"inner %d " % i * 30)
        path = o.data_path
    return Path(path).read_bytes()


def test_torn_record_holding_frames_is_a_torn_tail(tmp_path):
    blob = _store_bytes(tmp_path)
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        for i in range(10):
            s.put(i, b"x%d" % i)
        s.save()
        s.put(10, b"ten")
        end = s._writer.end
        path = s.data_path
        _crash(s)
    torn = _frame(99, blob)[:len(blob) // 2]            # the writer died half-way through
    with open(path, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(torn + bytes(4096))
    with PayloadStore(d) as s:                          # used to raise "middle of the log"
        assert sorted(s) == list(range(11)) and 99 not in s
        assert s.recovery.cut_frames == 0 and s.recovery.cut_keys == (99,)
        assert s.recovery.cut_bytes == len(torn) + 4096
        s.verify()


_TORN_WRITER = """
import sys
from diskhash import PayloadStore
blob = open(sys.argv[2], "rb").read()
s = PayloadStore(sys.argv[1], sync="never")
i = len(s)
while True:
    s.put(i, blob[i % 97:])
    sys.stdout.write("%d\\n" % i)
    sys.stdout.flush()
    i += 1
"""


def _kill_loop(tmp_path, kills, seed):
    blob = _store_bytes(tmp_path) * 20
    (tmp_path / "blob").write_bytes(blob)
    d = tmp_path / "s"
    rng = random.Random(seed)
    acked = -1
    for _ in range(kills):
        with subprocess.Popen([sys.executable, "-c", _TORN_WRITER, str(d), str(tmp_path / "blob")],
                              stdout=subprocess.PIPE, env=subprocess_env()) as proc:
            assert proc.stdout is not None
            first = proc.stdout.readline()              # opened and writing
            assert first, "writer died"
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            out = first + proc.stdout.read()
            proc.wait(timeout=30)
        lines = out.split()
        acked = int(lines[-1]) if lines else acked
        with PayloadStore(d, timeout=10) as s:          # always opens
            for k in range(acked + 1):
                assert s.get(k) == blob[k % 97:], k
            s.verify()


def test_sigkill_mid_put_of_a_store_payload(tmp_path):
    _kill_loop(tmp_path, 3, 5)


@pytest.mark.slow
def test_sigkill_mid_put_of_a_store_payload_many(tmp_path):
    _kill_loop(tmp_path, 40, 20)


# -- items 9 and 10: garbage lengths, header look-alikes ---------------------------

_OPEN_AND_VERIFY = """
import resource, sys
limit = int(sys.argv[2])
if limit:
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:                                    # the limit bites: a whole read of the claim fails
        bytearray(int(sys.argv[3]))
    except MemoryError:
        print("a whole read fails")
from diskhash import PayloadStore, CorruptPayloadError
with PayloadStore(sys.argv[1], readonly=True) as r:
    try:
        r.verify()
    except CorruptPayloadError as exc:
        print("verify:", exc.defects)
with PayloadStore(sys.argv[1]) as s:
    print("opened", len(s), s.recovery.cut_bytes)
    s.verify()
"""


def _run_open(d, limit=0, timeout=60, claim=0):
    env = subprocess_env()
    env["OPENBLAS_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-c", _OPEN_AND_VERIFY, str(d), str(limit), str(claim)],
                          capture_output=True, timeout=timeout, env=env)


def test_garbage_frame_length_reads_no_body(tmp_path):
    """A torn header claiming more than the child may allocate, inside a
    (sparse) file that long: the open and verify read the claimed body in
    bounded pieces, never whole (MemoryError).  (The claim was 1.5 GiB; the
    child checks that a whole read of the smaller claim fails under its limit.)"""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        for i in range(5):
            s.put(i, b"v%d" % i)
        end = s._writer.end
        path = s.data_path
        _crash(s)
    claim = 96 << 20
    head = fmt.FRAME.pack(0x12345678, fmt.KIND_PUT, 0, fmt.FRAME_MARK, claim, claim, 7, 0)
    with open(path, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(head)
        f.truncate(end + 32 + claim + 100)
    r = _run_open(d, limit=64 << 20, timeout=120, claim=claim)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert b"a whole read fails" in r.stdout
    assert b"opened 5 " in r.stdout


def test_header_look_alikes_scan_is_linear(tmp_path):
    """A tail of frame headers, each claiming the rest of the file: 4 MiB took
    20 s to open (each look-alike's claim was read and checksummed)."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
        end = s._writer.end
        path = s.data_path
        _crash(s)
    n = 4 << 20
    tail = bytearray(n)
    for p in range(0, n, 32):
        rest = n - p - 32
        fmt.FRAME.pack_into(tail, p, 0xDEADBEEF, fmt.KIND_PUT, 0, fmt.FRAME_MARK, rest, rest, p, 0)
    with open(path, "r+b") as f:
        f.truncate(end)
        f.seek(end)
        f.write(tail)
    r = _run_open(d, timeout=15)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert b"opened 1 %d" % n in r.stdout


# -- power loss: point-in-time recovery --------------------------------------------

_POWER_WRITER = """
import os, signal, sys
from diskhash import PayloadStore
s = PayloadStore(sys.argv[1])
s.put_many(range(400), [b"saved %d " % i * (1 + i % 50) for i in range(400)])
s.save()
for r in range(3):
    for i in range(0, 600, 3):
        s.put(i, b"round %d key %d " % (r, i) * (1 + i % 40))
    for i in range(5, 400, 37):
        s.delete(i)
    s.put_many(range(600, 650), [b"many %d %d" % (r, i) for i in range(600, 650)])
os.kill(os.getpid(), signal.SIGKILL)
"""


def _log_up_to(path, stop, deleted=None):
    """The log's state from its frames that end at or before ``stop`` (keys whose
    last such frame is a tombstone go to ``deleted``)."""
    state = {}
    deleted = set() if deleted is None else deleted
    fd = os.open(path, os.O_RDONLY)
    try:
        for item in fmt.scan(fd, fmt.DATA_HEADER_SIZE, os.fstat(fd).st_size, path, mode="stop"):
            if isinstance(item, fmt.Frame) and item.offset + 32 + item.stored_length <= stop:
                if item.kind == fmt.KIND_PUT:
                    state[item.key] = os.pread(fd, item.stored_length, item.offset + 32)
                    deleted.discard(item.key)
                else:
                    state.pop(item.key, None)
                    deleted.add(item.key)
    finally:
        os.close(fd)
    return state


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_power_loss_hole_recovers_to_a_point_in_time(tmp_path, where):
    """A SIGKILLed writer that wrote after its last save(); then a 4 KiB page of the
    unsaved log is zeroed (the page that did not reach the disk), whole frames after
    it.  The open keeps exactly the log up to the hole, and says what it cut."""
    d = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-c", _POWER_WRITER, str(d)], env=subprocess_env(),
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (path,) = [p for p in d.iterdir() if p.name.startswith("data-")]
    raw = path.read_bytes()
    header = fmt.unpack_data_header(raw[:64], str(path))
    saved = _log_up_to(str(path), header.checkpoint)
    log_end = fmt.DATA_HEADER_SIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        for item in fmt.scan(fd, 64, len(raw), str(path)):
            if isinstance(item, fmt.ScanResult):
                log_end = item.end
    finally:
        os.close(fd)
    page = (header.checkpoint + int((log_end - header.checkpoint) * where)) // 4096 * 4096
    assert header.checkpoint < page and page + 4096 < log_end
    with open(path, "r+b") as f:
        f.seek(page)
        f.write(bytes(4096))
    deleted = set()
    want = _log_up_to(str(path), page, deleted)
    with PayloadStore(d) as s:
        r = s.recovery
        assert isinstance(r, StoreRecovery) and r.cut_frames > 0 and r.cut_bytes > 4096
        assert r.rebuilt is not None
        assert {k: s.get(k) for k in s} == want
        for k in saved:                                 # everything saved is there, unless
            assert k in s or k in deleted               # the log before the hole deletes it
        s.verify()
    with PayloadStore(d) as s:                          # ... and the cut is for good
        assert s.recovery is None and {k: s.get(k) for k in s} == want


_LOST_DELETE_WRITER = """
import os, signal, sys
from diskhash import PayloadStore
s = PayloadStore(sys.argv[1])
s.put_many(range(50), [b"saved %d" % i for i in range(50)])
s.save()
for i in range(0, 50, 7):
    s.delete(i)
s.put(99, b"unsaved")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_power_loss_of_the_only_unsaved_page_brings_deletes_back(tmp_path):
    """Only the unsaved log (tombstones, a put) failed to reach the disk, while the
    index pages holding those deletes did: nothing is left in the log to replay or
    cut, so only the boot id in the data header tells the open that the machine went
    down.  The store must match its log -- the deleted keys come back, key 99 is
    absent -- not the index's half-written state."""
    d = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-c", _LOST_DELETE_WRITER, str(d)], env=subprocess_env(),
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (path,) = [p for p in d.iterdir() if p.name.startswith("data-")]
    raw = path.read_bytes()
    header = fmt.unpack_data_header(raw[:64], str(path))
    assert header.flags & fmt.FLAG_DIRTY and header.boot_id == fmt.BOOT_ID
    assert raw[header.checkpoint:].strip(b"\0")      # the deletes were written ...
    lost = bytes(len(raw) - header.checkpoint)        # ... but never reached the disk
    other_boot = bytes(b ^ 0xFF for b in fmt.BOOT_ID)  # ... and the machine rebooted
    path.write_bytes(fmt.pack_data_header(header.checkpoint, header.flags, other_boot)
                     + raw[64:header.checkpoint] + lost)
    with PayloadStore(d) as s:
        assert s.recovery is not None and "restarted" in (s.recovery.rebuilt or "")
        assert sorted(s) == list(range(50))
        assert all(s.get(i) == b"saved %d" % i for i in range(50))
        assert 99 not in s
        s.verify()


def test_a_process_crash_on_the_same_boot_keeps_the_index(tmp_path):
    """The same crash without a reboot: every index page is in the page cache, so
    the open replays and keeps the deletes; no rebuild."""
    d = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-c", _LOST_DELETE_WRITER, str(d)], env=subprocess_env(),
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with PayloadStore(d) as s:
        assert s.recovery is not None and s.recovery.rebuilt is None
        assert sorted(s) == [i for i in range(50) if i % 7] + [99]


def test_recovery_is_none_after_a_clean_close(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"x")
    with PayloadStore(tmp_path / "s") as s:
        assert s.recovery is None and s.last_salvage is None


# -- rebuild_index: dead and live damage -------------------------------------------

def _damaged_store(d):
    """Keys 0..9; key 3 overwritten (its first frame is dead) and key 5's only frame;
    returns (dead frame offset, live frame offset)."""
    with PayloadStore(d) as s:
        for i in range(10):
            s.put(i, b"first %d " % i * 10)
        dead = s.meta(3).offset - 32
        live = s.meta(5).offset - 32
        s.put(3, b"second three")
        s.put(10, b"ten")
    return dead, live


def _damage(d, offset, data):
    (path,) = [p for p in Path(d).iterdir() if p.name.startswith("data-")]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_rebuild_passes_over_a_dead_damaged_record(tmp_path):
    d = tmp_path / "s"
    dead, _live = _damaged_store(d)
    _damage(d, dead + 40, b"XXXX")
    with PayloadStore(d) as s:
        assert s.rebuild_index() == 11                   # used to refuse for ever
        assert s.get(3) == b"second three" and s.get(9) == b"first 9 " * 10
        assert s.last_salvage is not None and s.last_salvage.keys == () and s.last_salvage.frames == 1


@pytest.mark.parametrize("hide_key", [False, True])
def test_rebuild_refuses_live_damage_then_salvages(tmp_path, hide_key):
    d = tmp_path / "s"
    _dead, live = _damaged_store(d)
    # the payload, or the whole header too (the key then comes from the index)
    _damage(d, live if hide_key else live + 40, bytes(32) if hide_key else b"XXXX")
    with PayloadStore(d) as s:
        before = _files(d)
        with pytest.raises(DamagedRecordsError) as ei:
            s.rebuild_index()
        assert ei.value.keys == (5,) and "0x5" in str(ei.value)
        assert _files(d) == before and s.last_salvage is None
        assert s.rebuild_index(salvage=True) == 10
        assert 5 not in s and s.last_salvage.keys == (5,) and s.get(3) == b"second three"
        assert s.rebuild_index() == 10                   # the drop stays: a tombstone follows
    with PayloadStore(d) as s:
        assert sorted(s) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]


def test_cli_rebuild_salvage(tmp_path):
    d = tmp_path / "s"
    _dead, live = _damaged_store(d)
    _damage(d, live + 40, b"XXXX")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "diskhash", "store", "rebuild", str(d), *args],
                              capture_output=True, timeout=120, env=subprocess_env())

    r = run()
    assert r.returncode != 0 and b"0x5" in r.stderr
    r = run("--salvage")
    assert r.returncode == 0, r.stderr
    assert b"dropped 0x5" in r.stderr and b"10 entries" in r.stdout


def test_async_and_sharded_rebuild_pass_salvage(tmp_path):
    import anyio

    from diskhash import AsyncPayloadStore, ShardedStore

    d = tmp_path / "s"
    _dead, live = _damaged_store(d)
    _damage(d, live + 40, b"XXXX")

    async def main():
        s = await AsyncPayloadStore.open(d)
        try:
            with pytest.raises(DamagedRecordsError):
                await s.rebuild_index()
            assert await s.rebuild_index(salvage=True) == 10
        finally:
            await s.close()

    anyio.run(main)
    with ShardedStore(tmp_path / "set", shards=2) as ss:
        ss.put_many(range(50), [b"x"] * 50)
        assert ss.rebuild_index(salvage=True) == 50


def test_rebuild_never_brings_back_a_key_whose_tombstone_is_damaged(tmp_path):
    """A delete saved long ago, its tombstone then damaged together with dead
    records around it (a zeroed page): the rebuild passed over the stretch as
    dead and silently brought the deleted key back with its old value, with no
    error and no report -- no header in the stretch named it.  A key the log
    revives but the index does not hold, with a damaged stretch after its last
    record that may hold frames nobody can name, is now refused like a damaged
    live key (``DamagedRecordsError`` naming it); ``salvage=True`` keeps it
    deleted and reports it."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(7, b"old seven")
        for i in range(100, 110):
            s.put(i, b"dead %d " % i * 50)      # overwritten below: dead records
        s.delete(7)
        tomb = s._writer.end - fmt.FRAME_SIZE
        for i in range(100, 110):
            s.put(i, b"live %d" % i)
    _damage(d, tomb - 500, bytes(500 + fmt.FRAME_SIZE))  # dead records and the tombstone
    with PayloadStore(d) as s:
        assert 7 not in s
        with pytest.raises(DamagedRecordsError) as err:
            s.rebuild_index()
        assert 7 in err.value.keys
        assert 7 not in s
        s.rebuild_index(salvage=True)
        assert s.last_salvage is not None and 7 in s.last_salvage.keys
        assert 7 not in s and s.get(7) is None
        assert all(s.get(i) == b"live %d" % i for i in range(100, 110))
    with PayloadStore(d) as s:                   # the tombstone salvage appended keeps it deleted
        s.rebuild_index()
        assert 7 not in s and s.last_salvage is not None and not s.last_salvage.keys


def test_a_reboot_rebuild_never_brings_back_a_key_whose_tombstone_is_damaged(tmp_path):
    """The same damage before the checkpoint, found by the rebuild a writable open
    makes after the machine went down: the open refuses (``DamagedRecordsError``
    naming the deleted key), and ``salvage=True`` opens with the key still deleted
    -- it used to come back with its old value, unreported."""
    if fmt.BOOT_ID == fmt.NO_BOOT_ID:
        pytest.skip("this system has no boot id")
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(7, b"old seven")
        for i in range(100, 110):
            s.put(i, b"dead %d " % i * 50)
        s.delete(7)
        tomb = s._writer.end - fmt.FRAME_SIZE
        for i in range(100, 110):
            s.put(i, b"live %d" % i)
    _damage(d, tomb - 500, bytes(500 + fmt.FRAME_SIZE))
    (path,) = [p for p in d.iterdir() if p.name.startswith("data-")]
    header = fmt.unpack_data_header(path.read_bytes()[:64], str(path))
    _damage(d, 0, fmt.pack_data_header(header.checkpoint, fmt.FLAG_DIRTY,
                                       bytes(b ^ 0xFF for b in fmt.BOOT_ID)))
    with pytest.raises(DamagedRecordsError) as err:
        PayloadStore(d)
    assert 7 in err.value.keys
    with PayloadStore(d, salvage=True) as s:
        assert 7 not in s and s.last_salvage is not None and 7 in s.last_salvage.keys
        assert all(s.get(i) == b"live %d" % i for i in range(100, 110))
