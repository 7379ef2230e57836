"""``put`` of uncompressed bytes runs one compiled call (``_store.write.put_frame``):
the same frame bytes and PayloadMeta as the Python path, bad keys refused
before any byte is written, and a failed index insert leaves the frame zeroed.
"""

from __future__ import annotations

import mmap
import os
import random

import pytest

from diskhash import Compression, PayloadMeta, PayloadStore
from diskhash._format import payload as fmt
from diskhash._store import write as _store_write
from diskhash.errors import CorruptIndexError


def _frames(path: str, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def test_fast_put_writes_what_the_python_path_writes(tmp_path, monkeypatch):
    from diskhash._store import writer as _store
    rng = random.Random(1)
    items = [(rng.getrandbits(rng.choice((1, 64, 128))), rng.randbytes(rng.choice((0, 1, 100, 4000))))
             for _ in range(300)]
    out = {}
    for name in ("fast", "slow"):
        with monkeypatch.context() as m:
            if name == "slow":
                m.setattr(_store, "_put_frame", None)
            with PayloadStore(tmp_path / name) as s:
                metas = [s.put(k, v) for k, v in items]
                assert all(type(meta) is PayloadMeta for meta in metas)
                out[name] = (metas, _frames(s.data_path, fmt.DATA_HEADER_SIZE, s._writer.end))
                model = dict(items)
                assert s.get_many(list(model)) == list(model.values())
                s.verify()
    assert out["fast"] == out["slow"]


@pytest.mark.parametrize("key, exc", [(-1, OverflowError), (2**128, OverflowError),
                                      ("k", TypeError), (None, TypeError), (2.0, TypeError)])
def test_bad_key_writes_nothing(tmp_path, key, exc):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        end = s._writer.end
        data = _frames(s.data_path, 0, s._writer.gen.alloc)
        with pytest.raises(exc):
            s.put(key, b"payload")
        assert s._writer.end == end
        assert _frames(s.data_path, 0, s._writer.gen.alloc) == data
        assert s.get(1) == b"one" and len(s) == 1


def test_failed_insert_zeroes_the_frame(tmp_path):
    """A damaged index (every slot's tag made invalid behind the store's back)
    makes the insert raise CorruptIndexError: the frame is zeroed, the log end
    unchanged, and with the tags put back the store goes on."""
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        end = s._writer.end
        before = _frames(s.data_path, 0, s._writer.gen.alloc)
        with open(s._writer.gen.index_path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            slots = (len(m) - 64) // 40
            tags = bytes(m[64 + 40 * i] for i in range(slots))
            for i in range(slots):
                m[64 + 40 * i] = 9
            try:
                with pytest.raises(CorruptIndexError):
                    s.put(2, b"two" * 100)
            finally:
                for i in range(slots):
                    m[64 + 40 * i] = tags[i]
        assert s._writer.end == end
        assert _frames(s.data_path, 0, s._writer.gen.alloc) == before
        s.put(3, b"three")
        assert s.get(3) == b"three" and s.get(1) == b"one" and s.get(2) is None


def test_put_frame_misuse(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        g = s._writer.gen
        with s._writer.lock:
            for bad_index in (object(), None, s):
                with pytest.raises(TypeError):
                    _store_write.put_frame(bad_index, g.view, s._writer.end, 5, b"x")
            with pytest.raises(TypeError):
                _store_write.put_frame(g.index, g.view, s._writer.end, 5, bytearray(b"x"))
            with pytest.raises(BufferError):
                _store_write.put_frame(g.index, b"read-only" * 10, 0, 5, b"x")
            for start in (-1, len(g.view), len(g.view) - 10):
                with pytest.raises(ValueError):
                    _store_write.put_frame(g.index, g.view, start, 5, b"x" * 20)
        assert s.get(5) is None and s.get(1) == b"one"


def test_compressed_and_non_bytes_puts_take_the_python_path(tmp_path):
    with PayloadStore(tmp_path / "s", compression=Compression.LZ4) as s:
        meta = s.put(1, b"abc" * 1000)
        assert meta.compression == Compression.LZ4
        assert s.put(2, b"abc" * 1000, compression=Compression.NONE).compression == Compression.NONE
        assert s.put(3, bytearray(b"xyz")).length == 3
        assert s.get_many([1, 2, 3]) == [b"abc" * 1000, b"abc" * 1000, b"xyz"]


def test_errors_come_in_the_old_order(tmp_path):
    """A bad key is reported before a read-only or closed store is."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"one")
    with PayloadStore(d, readonly=True) as s:
        with pytest.raises(TypeError):
            s.put("bad", b"x")
        from diskhash.errors import ReadOnlyIndexError
        with pytest.raises(ReadOnlyIndexError):
            s.put(2, b"x")
    s = PayloadStore(d)
    s.close()
    with pytest.raises(TypeError):
        s.put("bad", b"x")
    from diskhash.errors import IndexClosedError
    with pytest.raises(IndexClosedError):
        s.put(2, b"x")


def _data_map_flags(data_path: str) -> "list[str]":
    """VmFlags of every mapping of ``data_path`` in this process (/proc/self/smaps)."""
    flags, current = [], False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:
                current = len(head) >= 6 and head[5] == data_path
            elif current and line.startswith("VmFlags:"):
                flags.append(line.split(":", 1)[1])
    return flags


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_populate_leaves_the_whole_map_advised_random(tmp_path):
    """The data file's map stays advised random however it grows (readers
    must never trigger read-ahead); populate_pages's read-ahead of the new range
    goes through the file, not the map's advice."""
    from diskhash._store import writer as _store
    with PayloadStore(tmp_path / "s") as s:
        payload = os.urandom(1024)
        for i in range(5000):                    # several allocations of the data file
            s.put(i, payload)
        g = s._writer.gen
        assert g.alloc > _store.ALLOC_MIN
        flags = _data_map_flags(os.path.realpath(g.data_path))
        assert flags, "the data file is not mapped"
        assert all(" rr" in f for f in flags), flags
        assert s.get(4999) == payload


def test_put_key_whose_index_puts_to_the_same_store(tmp_path):
    """The compiled put converted the key under the (reentrant) writer lock,
    after reading where the log ends: a key whose ``__index__`` put another
    record wrote that record at the same offset, which the outer put then
    overwrote (the nested key's index entry pointed at the outer frame).

    A hostile pass over the compiled store paths found this.
    """
    from diskhash import PayloadStore

    with PayloadStore(tmp_path / "s") as s:
        class Nesting:
            def __index__(self):
                s.put(2, b"nested" * 10)
                return 1

        s.put(1, b"first")          # the file's first blocks allocated: no grow below
        s.put(Nesting(), b"outer")
        assert s.get(1) == b"outer"
        assert s.get(2) == b"nested" * 10
        s.verify()
