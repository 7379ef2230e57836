"""The compiled read paths (``MapReader.get``/``get_many``) answer exactly as the Python path.

``PayloadStore.get`` and ``get_many`` probe the index, check the frame and
copy the payload in one compiled call, and hand anything unusual (absent
keys aside) to ``StoreReader.get_slow``, the PayloadMeta path.  These tests compare the
two over many random keys, absent keys, compressed, empty and big records,
damaged records (the same ``CorruptPayloadError``), bad keys and misuse of
the compiled object, and a compaction racing the reads.
"""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers.processes import FRAME_PRELUDE, child_stdout, subprocess_env

from diskhash import KEY_DTYPE, Compression, PayloadStore
from diskhash._format import payload as fmt
from diskhash._store import read as _store_read
from diskhash.errors import CorruptPayloadError, IndexClosedError


def _child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


np = pytest.importorskip("numpy")
pytest.importorskip("lz4")

BIG = 70_000        # over BIG_READ: the pread path


def _fill(store: PayloadStore, rng: random.Random, n: int) -> "dict[int, bytes]":
    """``n`` records under random keys (small and 128-bit), of sizes 0..3000 and
    a few big ones; compressible text and random bytes; LZ4 for some."""
    model: dict[int, bytes] = {}
    for i in range(n):
        key = rng.getrandbits(rng.choice((16, 64, 128)))
        if i % 97 == 0:
            size = BIG
        else:
            size = rng.choice((0, 1, 7, 100, 1024, 3000, rng.randrange(4096)))
        if i % 2:
            payload = (b"text %d " % i) * (size // 8 + 1)
            payload = payload[:size]
        else:
            payload = rng.randbytes(size)
        comp = Compression.LZ4 if i % 3 == 0 else Compression.NONE
        store.put(key, payload, compression=comp)
        model[key] = payload
    return model


def _absent(rng: random.Random, model: "dict[int, bytes]", n: int) -> "list[int]":
    out = []
    while len(out) < n:
        k = rng.getrandbits(rng.choice((8, 64, 128)))
        if k not in model:
            out.append(k)
    return out


def _key_array(keys: "list[int]"):
    arr = np.empty(len(keys), dtype=KEY_DTYPE)
    arr["lo"] = [k & (2**64 - 1) for k in keys]
    arr["hi"] = [k >> 64 for k in keys]
    return arr


@pytest.mark.parametrize("readonly", [False, True])
def test_fused_get_matches_the_python_path(tmp_path, readonly):
    rng = random.Random(11)
    with PayloadStore(tmp_path / "s") as s:
        model = _fill(s, rng, 1500)
    s = PayloadStore(tmp_path / "s", readonly=readonly)
    try:
        absent = _absent(rng, model, 300)
        keys = list(model) + absent
        rng.shuffle(keys)
        for k in keys:
            want = model.get(k)
            assert s.get(k) == want
            assert s._reader.get_slow(s._live(), k, None) == want
            assert s.get(k, b"dflt") == (want if want is not None else b"dflt")
            if want is None:
                with pytest.raises(KeyError):
                    s[k]
            else:
                assert s[k] == want
        assert s._writer.gen.reader is not None        # the compiled path was there to take
        want_list = [model.get(k) for k in keys]
        assert s.get_many(keys) == want_list
        assert s.get_many(tuple(keys)) == want_list
        assert s.get_many(_key_array(keys)) == want_list
        small = [k for k in keys if k < 2**64]
        assert s.get_many(np.array(small, dtype=np.uint64)) == [model.get(k) for k in small]
        assert s.get_many([]) == []
    finally:
        s.close()


def test_reader_get_answers(tmp_path):
    """The compiled call itself: bytes, None for absent, FALLBACK for the rest."""
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        s.put(2, b"x" * BIG)
        s.put(3, b"a" * 5000, compression=Compression.LZ4)
        r = s._writer.gen.reader
        assert r.get(1, True, 1 << 16) == b"one"
        assert r.get(99, True, 1 << 16) is None
        assert r.get(2, True, 1 << 16) == _store_read.FALLBACK        # big: pread
        assert r.get(1, True, 2) == _store_read.FALLBACK              # over the limit
        assert r.get(3, True, 1 << 16) == b"a" * 5000                 # decoded
        out, fixups = r.get_many([1, 99, 2, 3], True, 1 << 16)
        assert out == [b"one", None, None, b"a" * 5000]
        assert fixups == [2]
        lo = np.array([1, 99, 3], dtype=np.uint64)
        out, fixups = r.get_many_u128(lo, np.zeros(3, dtype=np.uint64), True, 1 << 16)
        assert (out, fixups) == ([b"one", None, b"a" * 5000], [])


def test_fused_get_after_growth_remaps(tmp_path):
    """Records appended after the reader's map was made are beyond it: the
    fallback remaps and the next reads are compiled again."""
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"first")
        r0 = s._writer.gen.reader
        model = {k: os.urandom(2000) for k in range(2, 1200)}
        for k, v in model.items():
            s.put(k, v)
        assert all(s.get(k) == v for k, v in model.items())
        assert s.get_many(list(model)) == list(model.values())
        assert s._writer.gen.reader is not r0


def _damage(path: str, offset: int, xor: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ xor]))


def _same_error(store: PayloadStore, key: int) -> CorruptPayloadError:
    """get, [], get_many and the Python path raise the same CorruptPayloadError."""
    with pytest.raises(CorruptPayloadError) as slow:
        store._reader.get_slow(store._live(), key, None)
    for call in (store.get, store.__getitem__, lambda k: store.get_many([1, k])):
        with pytest.raises(CorruptPayloadError) as fast:
            call(key)
        e, f = slow.value, fast.value
        assert (type(f), str(f), f.path, f.defects, f.edge_id, f.offset) == \
            (type(e), str(e), e.path, e.defects, e.edge_id, e.offset)
    return slow.value


@pytest.mark.parametrize("where, what", [
    ("payload", "payload checksum mismatch"),
    ("key", "record header does not match the index"),
    ("length", "record header does not match the index"),
    ("mark", "record header does not match the index"),
    ("checksum", "payload checksum mismatch"),
])
def test_damaged_record_raises_as_before(tmp_path, where, what):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"fine")
        meta = s.put(7, os.urandom(1000))
        s.put(8, b"after")
        path = s.data_path
    frame = meta.offset - fmt.FRAME_SIZE
    at = {"payload": meta.offset + 500, "key": frame + 16, "length": frame + 8,
          "mark": frame + 6, "checksum": frame}[where]
    _damage(path, at)
    with PayloadStore(d, readonly=True) as s:
        s.get(1)                                    # maps the file: the compiled path is live
        assert s._writer.gen.reader is not None
        err = _same_error(s, 7)
        assert err.defects == [what]
        assert err.edge_id == 7 and err.offset == frame
        assert s.get(8) == b"after"
    if where == "payload":
        with PayloadStore(d, readonly=True, verify_checksums=False) as s:
            got = s.get(7)
            assert got == s._reader.get_slow(s._live(), 7, None) and len(got) == 1000


def test_compressed_record_that_does_not_decode(tmp_path):
    """A frame whose checksum is right but whose LZ4 block is garbage: the
    decoder's ValueError becomes the same CorruptPayloadError on every path."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"fine")
        meta = s.put(5, b"abc" * 1000, compression=Compression.LZ4)
        path = s.data_path
    assert meta.compression == Compression.LZ4
    frame = meta.offset - fmt.FRAME_SIZE
    with open(path, "r+b") as f:
        f.seek(frame)
        buf = bytearray(f.read(fmt.FRAME_SIZE + meta.length))
        buf[fmt.FRAME_SIZE:] = b"\xff" * meta.length       # not an LZ4 block
        buf[:4] = fmt.checksum(bytes(buf[4:])).to_bytes(4, "little")
        f.seek(frame)
        f.write(buf)
    with PayloadStore(d, readonly=True) as s:
        s.get(1)
        err = _same_error(s, 5)
        assert "LZ4" in err.defects[0]


def test_record_beyond_the_file(tmp_path):
    """An index entry pointing past the end of the data file (the data was cut
    behind the store's back): the same 'shorter than' error on every path."""
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"fine")
        meta = s.put(2, os.urandom(3000))
        path = s.data_path
    os.truncate(path, meta.offset + 10)
    with PayloadStore(d, readonly=True) as s:
        assert s.get(1) == b"fine"
        err = _same_error(s, 2)
        assert "shorter" in err.defects[0]


@pytest.mark.parametrize("key, exc", [
    (-1, OverflowError), (2**128, OverflowError), (-(2**70), OverflowError),
    ("7", TypeError), (1.0, TypeError), (None, TypeError), (b"\x01", TypeError),
    (True, TypeError), ([1], TypeError),
])
def test_bad_keys_raise_as_the_index_does(tmp_path, key, exc):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        with pytest.raises(exc) as slow:
            s.index.get(key)
        with pytest.raises(exc) as fast:
            s.get(key)
        assert str(fast.value) == str(slow.value)
        with pytest.raises(exc):
            s.get_many([1, key])
        with pytest.raises(exc):
            s._writer.gen.reader.get(key, True, 1 << 16)
        with pytest.raises(exc):
            s._writer.gen.reader.get_many([1, key], True, 1 << 16)
        assert s.get(1) == b"one"


def test_compiled_object_misuse_raises(tmp_path):
    """Foreign ``self``, a foreign index, wrong argument types: TypeError or
    ValueError, never a crash."""
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        r = s._writer.gen.reader
        for bad_self in (object(), "x", 5, None, s.index):
            with pytest.raises(TypeError):
                _store_read.MapReader.get(bad_self, 1, True, 100)
            with pytest.raises(TypeError):
                _store_read.MapReader.get_many(bad_self, [1], True, 100)
            with pytest.raises(TypeError):
                _store_read.MapReader.get_many_u128(bad_self, np.zeros(1, np.uint64),
                                                    np.zeros(1, np.uint64), True, 100)
        m = mmap.mmap(-1, 4096)
        try:
            for bad_index in (object(), "x", s):
                with pytest.raises(TypeError):
                    _store_read.MapReader(m, bad_index)
            lone = _store_read.MapReader(m)
            with pytest.raises(ValueError, match="without an index"):
                lone.get(1, True, 100)
            with pytest.raises(ValueError, match="without an index"):
                lone.get_many([1], True, 100)
            lone.release()
        finally:
            m.close()
        with pytest.raises(TypeError):
            r.get_many((1, 2), True, 100)               # a list only
        with pytest.raises(TypeError):
            r.get_many_u128([1], [0], True, 100)        # buffers of uint64 only
        with pytest.raises(ValueError):
            r.get_many_u128(np.zeros(2, np.uint64), np.zeros(1, np.uint64), True, 100)
        with pytest.raises((ValueError, TypeError)):
            r.get_many_u128(np.zeros(2, np.int32), np.zeros(2, np.int32), True, 100)
        assert r.get(1, True, -1) == _store_read.FALLBACK   # a negative limit: Python path
        assert s.get(1) == b"one"


def test_released_reader_falls_back(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        r = s._writer.gen.reader
        r.release()
        assert r.get(1, True, 100) == _store_read.FALLBACK
        assert r.get_many([1, 2], True, 100) == ([None, None], [0])


def test_closed_store_raises_index_closed(tmp_path):
    s = PayloadStore(tmp_path / "s")
    s.put(1, b"one")
    reader = s._writer.gen.reader
    s.close()
    for call in (lambda: s.get(1), lambda: s[1], lambda: s.get_many([1]),
                 lambda: s.get_many(np.array([1], dtype=np.uint64))):
        with pytest.raises(IndexClosedError):
            call()
    for k in (1, 5):                                # the index under it is closed
        with pytest.raises(IndexClosedError):
            reader.get(k, True, 100)
    with pytest.raises(IndexClosedError):
        reader.get_many([1], True, 100)


def test_compaction_racing_fused_reads(tmp_path):
    """Readers (get, get_many, the numpy get_many) check every answer against
    the model while compactions swap generations and a writer appends other
    keys (growing the data file, so readers remap)."""
    rng = random.Random(5)
    d = tmp_path / "s"
    s = PayloadStore(d)
    model = {rng.getrandbits(100): rng.randbytes(rng.randrange(1, 2000)) for _ in range(2000)}
    for k, v in model.items():
        s.put(k, v, compression=Compression.LZ4 if k % 2 else Compression.NONE)
    for k in list(model)[:500]:                 # garbage for compact to drop
        s.put(k, model[k])
    keys = list(model)
    absent = _absent(rng, model, 50)
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        r = random.Random(seed)
        try:
            while not stop.is_set():
                batch = r.sample(keys, 64) + r.sample(absent, 4)
                for k in batch[:16]:
                    assert s.get(k) == model.get(k)
                assert s.get_many(batch) == [model.get(k) for k in batch]
                assert s.get_many(_key_array(batch)) == [model.get(k) for k in batch]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set():
                s.put(2**120 + i, os.urandom(3000))
                i += 1
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(3)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    try:
        for _ in range(4):
            s.compact()
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        assert not errors, errors[0]
        assert s.stats().data_generation >= 5
        assert s.get_many(keys) == [model[k] for k in keys]
    finally:
        s.close()


@pytest.mark.parametrize("ulen_delta, direct", [(0, True), (0, False), (5, True), (5, False),
                                                (-1, True), (-1, False)])
def test_lz4_decode_length_is_checked(tmp_path, ulen_delta, direct):
    """A frame (checksum right, frame and index agreeing) whose LZ4 block does
    not decode to the recorded length is the Python path's to report: the
    compiled get answers FALLBACK, whether it calls lz4 directly or the codec."""
    import lz4.block

    from diskhash import DiskHashIndex, PayloadMeta
    from diskhash._store import codecs as _codecs
    original = b"some text, some text, some more text " * 30
    block = lz4.block.compress(original, store_size=False)
    ulen = len(original) + ulen_delta
    body = fmt.FRAME_BODY.pack(1, 1, fmt.FRAME_MARK, len(block), ulen, 7, 0) + block
    frame = fmt.checksum(body).to_bytes(4, "little") + body
    m = mmap.mmap(-1, 4096)
    m[fmt.DATA_HEADER_SIZE:fmt.DATA_HEADER_SIZE + len(frame)] = frame
    with DiskHashIndex(str(tmp_path / "i.idx")) as idx:
        idx.insert(7, PayloadMeta(7, fmt.DATA_HEADER_SIZE + fmt.FRAME_SIZE, len(block),
                                  Compression.LZ4, ulen))
        r = _store_read.MapReader(m, idx, _codecs.decompress,
                                  lz4.block.decompress if direct else None)
        try:
            got = r.get(7, True, 1 << 16)
            if ulen_delta == 0:
                assert got == original
            else:
                assert got == _store_read.FALLBACK
            assert r.get_many([7, 8], True, 1 << 16) == (
                ([original, None], []) if ulen_delta == 0 else ([None, None], [0]))
        finally:
            r.release()
    m.close()



def test_key_that_shrinks_the_list_does_not_crash(tmp_path):
    """A key whose __index__ empties the key list mid-conversion: RuntimeError,
    never a read past the list (in a child: a regression would crash)."""
    code = f"""
import pytest
from diskhash import PayloadStore
keys = []
class Shrinking:
    def __index__(self):
        keys.clear()
        return 1
keys.extend([Shrinking(), 2, 3, 4])
with PayloadStore({str(tmp_path / "s")!r}) as s:
    s.put(1, b"one")
    with pytest.raises(RuntimeError, match="changed size"):
        s._writer.gen.reader.get_many(keys, True, 1 << 16)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_compiled_reader_offset_that_wraps_past_2_64_is_beyond_not_a_segfault():
    # offset + length wrapped around 2**64 and passed the bounds check: memcpy
    # from before the map (SIGSEGV).
    """A hostile pass over PayloadStore and ShardedStore found this."""
    proc = _child("""
        import mmap
        from diskhash._store.read import BEYOND, MapReader
        r = MapReader(mmap.mmap(-1, 4096))
        meta = (0, 2**64 - 16, 32, 0, 32)
        assert r.read(meta, True) == BEYOND, r.read(meta, True)
        assert r.read((0, 4000, 2**64 - 1, 0, 0), False) == BEYOND
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_map_reader_read_edge_id_that_releases_the_map(tmp_path):
    """``MapReader.read`` with an int-subclass edge id whose ``>>`` releases the
    reader and closes the map: no checksum read through the released pointer.

    A hostile pass over the compiled store paths found this.
    """
    out = child_stdout("""
        import mmap
        mm = mmap.mmap(-1, 1 << 16)
        f = frame(7, b"p" * 1000)
        mm[64:64 + len(f)] = f
        r = sr.MapReader(mm)
        assert r.read((7, 96, 1000, 0, 1000), True) == b"p" * 1000
        class Releasing(int):
            def __rshift__(self, n):
                r.release()
                mm.close()
                return int(self) >> n
        got = r.read((Releasing(7), 96, 1000, 0, 1000), True)
        assert got == b"p" * 1000 or got == sr.BEYOND, got
        assert r.read((7, 96, 1000, 0, 1000), True) == sr.BEYOND
        print("ok")
    """, tmp_path, FRAME_PRELUDE)
    assert out.strip() == "ok"


@pytest.mark.parametrize("offset,length", [
    (1, 10), (31, 10), (40, 0),                         # before the first frame
    (2**64 - 1, 100_000), (2**63, 70_000),              # past any file, over BIG_READ
    (2**64 - 1, 10), (2**63 + 96, 0),                   # past any file, small
])
def test_damaged_index_entry_raises_corrupt_payload(tmp_path, offset, length):
    """An index entry whose offset lies before the first frame or past any
    possible file (a damaged index file; here written through ``store.index``):
    the fused get falls back and the Python path raises ``CorruptPayloadError``,
    not ``struct.error`` (a negative offset) or ``OverflowError`` (pread).

    A hostile pass over the compiled store paths found this.
    """
    from diskhash import PayloadMeta, PayloadStore
    from diskhash.errors import CorruptPayloadError

    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        s.index.insert(5, PayloadMeta(5, offset, length, 0, length))
        with pytest.raises(CorruptPayloadError):
            s.get(5)
        with pytest.raises(CorruptPayloadError):
            s.get_many([1, 5])
        assert s.get(1) == b"one"
