"""PayloadStore crash safety: torn tails, mid-log damage, log replay, SIGKILL loops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
from helpers.processes import subprocess_env

from diskhash import Compression, CorruptPayloadError, PayloadStore
from diskhash._format import payload as fmt

HERE = Path(__file__).resolve().parent


def _fill(directory, n=50, **kw):
    with PayloadStore(directory, **kw) as s:
        for i in range(n):
            s.put(i, b"value %d " % i * (i + 1))
        return s.data_path


def _crash(store):
    """Drop a store the way a killed process would: no save, no clean header, no trim."""
    store._writer.gen.index.close()
    store._writer.gen = None
    store._life.lock.close()
    store._life.lock = None


def _files(directory):
    return {p.name: p.read_bytes() for p in Path(directory).iterdir() if p.is_file()}


@pytest.mark.parametrize("tail", [b"\x00" * 100, b"garbage!" * 3, "half"])
def test_torn_tail_cut_on_writable_open_only(tmp_path, tail):
    d = tmp_path / "s"
    path = _fill(d)
    size = os.path.getsize(path)
    if tail == "half":      # the first half of a real frame
        body = fmt.pack_frame_body(fmt.KIND_PUT, 0, 500, 500, 99) + b"z" * 500
        frame = fmt.checksum(body).to_bytes(4, "little") + body
        tail = frame[:300]
    with open(path, "ab") as f:
        f.write(tail)
    with PayloadStore(d, readonly=True) as r:           # read-only: never writes
        assert r.get(49) == b"value 49 " * 50
    assert os.path.getsize(path) == size + len(tail)
    with PayloadStore(d) as s:
        assert s.recovery.cut_bytes == len(tail)
        assert len(s) == 50 and s.get(7) == b"value 7 " * 8 and 99 not in s
        s.verify()
    assert os.path.getsize(path) == size


def test_damage_after_the_checkpoint_is_cut_to_a_point_in_time(tmp_path):
    """A damaged frame after the last save() with a valid frame after it (what a
    power loss leaves): the open keeps the log up to it, cuts the rest and says so.
    (It used to refuse: "damaged record in the middle of the log", for good.)"""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"a" * 100)
        s.put(2, b"old two")
        s.save()
        m2 = s.put(2, b"b" * 100)
        s.put(3, b"c" * 100)
        path = s.data_path
        os.pwrite(s._writer.gen.fd, b"X", m2.offset + 10)       # damage frame 2, frame 3 stays valid
        _crash(s)
    with PayloadStore(d) as s:
        r = s.recovery
        assert r is not None and r.cut_frames == 1 and r.cut_keys == (2, 3)
        assert r.rebuilt is not None and "point-in-time" in r.rebuilt
        assert os.path.getsize(path) == m2.offset - 32
        assert sorted(s) == [1, 2] and s.get(2) == b"old two" and s.get(1) == b"a" * 100
        s.verify()


def test_damage_before_the_checkpoint_stays_an_error(tmp_path):
    """Damage before the checkpoint is never cut: an open that must rebuild the index
    refuses (DamagedRecordsError, a CorruptPayloadError) and changes nothing;
    ``salvage=True`` opens, dropping exactly the damaged key."""
    from diskhash import DamagedRecordsError
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"a" * 100)
        m2 = s.put(2, b"b" * 100)
        s.put(3, b"c" * 100)
        path, index_path = s.data_path, s.index.path
    with open(path, "r+b") as f:
        f.seek(m2.offset + 10)
        f.write(b"X")
    os.unlink(index_path)
    before = _files(d)
    with pytest.raises(CorruptPayloadError) as ei:
        PayloadStore(d)
    assert isinstance(ei.value, DamagedRecordsError) and ei.value.keys == (2,)
    assert ei.value.path == path and ei.value.offset == m2.offset - 32
    assert _files(d) == before                               # nothing cut, nothing written
    with PayloadStore(d, salvage=True) as s:
        assert sorted(s) == [1, 3] and s.last_salvage.keys == (2,)
    with PayloadStore(d) as s:
        assert sorted(s) == [1, 3]
        assert s.rebuild_index() == 2                       # the drop is in the log: dead now
        assert s.last_salvage is not None and s.last_salvage.keys == () and s.last_salvage.frames == 1


def test_records_the_index_lacks_are_replayed(tmp_path):
    """A writer killed after its puts (no save, no close): a writable open indexes them."""
    d = tmp_path / "s"
    code = textwrap.dedent(f"""
        import os, signal
        from diskhash import PayloadStore, Compression
        s = PayloadStore({str(d)!r}, compression=Compression.ZSTD)
        for i in range(100):
            s.put(i, b"saved %d" % i * 20)
        s.save()
        for i in range(100, 200):
            s.put(i, b"later %d" % i * 20)
        s.delete(5)
        s.put_many(range(200, 300), [b"many %d" % i for i in range(200, 300)])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with PayloadStore(d) as s:
        # the killed writer's index writes live in the page cache, so most records are
        # already indexed; the log after the checkpoint is replayed all the same
        assert s.recovery is not None and s.recovery.replayed >= 201
        assert len(s) == 299 and 5 not in s
        assert s.get(150) == b"later 150" * 20 and s.get(250) == b"many 250"
        s.verify()


def test_replay_indexes_frames_missing_from_the_index(tmp_path):
    """Frames appended to the log that never reached the index (the index is the one
    of the last save) come back on a writable open, tombstones included."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
        s.put(2, b"two")
        path = s.data_path
    saved_index = {p.name: p.read_bytes() for p in d.iterdir() if p.name.startswith("index-")}
    with PayloadStore(d) as s:
        s.put(3, b"three", compression=Compression.LZ4)
        s.put(1, b"one again")
        s.delete(2)
        s.save()
        data = Path(path).read_bytes()
        _crash(s)                       # the index below is put back to its old state
    for name, content in saved_index.items():
        (d / name).write_bytes(content)
    # the checkpoint in the header says the index covered everything: put back the old one
    hdr = fmt.pack_data_header(len(Path(path).read_bytes()) - 0, fmt.FLAG_DIRTY)
    with open(path, "r+b") as f:
        f.write(fmt.pack_data_header(fmt.DATA_HEADER_SIZE + 2 * 32 + 6, fmt.FLAG_DIRTY))
    assert len(data) > 0 and len(hdr) == 64
    with PayloadStore(d) as s:
        assert s.recovery.replayed == 3
        assert sorted(s) == [1, 3] and s.get(1) == b"one again" and s.get(3) == b"three"
        s.verify()


def test_sigkill_loop_short(tmp_path):
    from helpers.store_crash_model import run
    stats = run(tmp_path / "store", kills=8, seed=11, env=subprocess_env(), max_delay=0.6)
    assert stats.rounds == 8


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mixed", "compact", "rebuild"])
def test_sigkill_loop_hundreds(tmp_path, mode):
    from helpers.store_crash_model import run
    stats = run(tmp_path / "store", kills=100, seed=zlib.crc32(mode.encode()) & 0xFFFF, env=subprocess_env(),
                max_delay=0.7, modes=(mode,))
    print(stats)
    assert stats.rounds == 100
    if mode == "compact":
        assert stats.killed_mid_compact > 0
    if mode == "rebuild":
        assert stats.killed_mid_rebuild > 0


def test_readonly_after_a_killed_writer(tmp_path):
    """A writer killed mid-run leaves its allocated (zero) tail: a read-only open reads
    and verifies fine without writing; the writable open afterwards cuts the tail."""
    d = tmp_path / "s"
    code = textwrap.dedent(f"""
        import os, signal
        from diskhash import PayloadStore
        s = PayloadStore({str(d)!r})
        s.put_many(range(100), [b"p%d" % i * 30 for i in range(100)])
        s.save()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), timeout=60)
    assert proc.returncode == -signal.SIGKILL
    data = next(p for p in d.iterdir() if p.name.startswith("data-"))
    size = data.stat().st_size
    with PayloadStore(d, readonly=True) as r:
        assert len(r) == 100 and r.get(99) == b"p99" * 30
        r.verify()
    assert data.stat().st_size == size
    with PayloadStore(d) as s:
        s.verify()
    assert data.stat().st_size < size


def test_failed_indexing_leaves_nothing_to_replay(tmp_path, monkeypatch):
    """A put/put_many whose index step fails is zeroed in the log: no later open
    replays it, and the next append reuses the space."""
    from diskhash import DiskHashIndex
    d = tmp_path / "s"
    s = PayloadStore(d)
    s.put(1, b"kept")
    s.save()
    idx = s.index

    class Boom(Exception):
        pass

    def fail(*args, **kwargs):
        raise Boom

    monkeypatch.setattr(s._writer.gen, "index", type("Failing", (), {
        "insert": staticmethod(fail), "insert_many": staticmethod(fail),
        "__getattr__": lambda self, name: getattr(idx, name)})())
    end = s._writer.end
    with pytest.raises(Boom):
        s.put(2, b"lost" * 100)
    with pytest.raises(Boom):
        s.put_many(range(10, 200), [b"many %d" % i for i in range(10, 200)])
    assert s._writer.end == end
    monkeypatch.undo()
    assert isinstance(s.index, DiskHashIndex)
    s.put(3, b"after")
    _crash(s)
    with PayloadStore(d) as s2:
        assert sorted(s2) == [1, 3] and s2.get(3) == b"after"
        s2.verify()


def test_sigkill_during_the_compiled_write_paths(tmp_path):
    """The SIGKILL model (tests/helpers/store_crash_model.py) in ``plain`` mode: puts and
    put_manys of uncompressed payloads, which take the compiled paths
    (``put_frame``, ``encode_frames``) the LZ4-default modes never reach.

    A hostile pass over the compiled store paths found this.
    """
    from helpers.store_crash_model import run
    stats = run(tmp_path / "store", kills=8, seed=5, env=subprocess_env(), max_delay=0.6,
                modes=("plain",))
    assert stats.rounds == 8


@pytest.mark.slow
def test_sigkill_during_the_compiled_write_paths_hundreds(tmp_path):
    """A hostile pass over the compiled store paths found this."""
    from helpers.store_crash_model import run
    stats = run(tmp_path / "store", kills=100, seed=23, env=subprocess_env(), max_delay=0.7,
                modes=("plain",))
    print(stats)
    assert stats.rounds == 100 and stats.killed_mid_put_many > 0
