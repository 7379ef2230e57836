"""PayloadStore: the STORE-API surface, round trips, codecs, persistence."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from diskhash import (
    Compression,
    CorruptPayloadError,
    DiskHashError,
    IndexClosedError,
    PayloadMeta,
    PayloadStore,
    ReadOnlyIndexError,
    StoreStats,
)


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store" / "nested"


def test_round_trip_every_codec(store_dir):
    text = b"the quick brown fox jumps over the lazy dog " * 40
    rand = os.urandom(2000)
    with PayloadStore(store_dir) as s:
        for i, comp in enumerate(Compression):
            m = s.put(10 + i, text, compression=comp)
            assert isinstance(m, PayloadMeta) and m.edge_id == 10 + i
            assert m.compression == comp and m.uncompressed_length == len(text)
            assert (m.length < len(text)) == (comp != Compression.NONE)
            assert s.get(10 + i) == text
            # random bytes do not get smaller: stored as NONE
            m = s.put(20 + i, rand, compression=comp)
            assert m.compression == Compression.NONE and m.length == len(rand)
            assert s[20 + i] == rand
        assert s.put(30, b"").length == 0 and s.get(30) == b""
        assert len(s) == 7


def test_api_surface(store_dir):
    with PayloadStore(store_dir, compression=Compression.ZSTD) as s:
        assert s.directory == os.path.realpath(store_dir) and not s.readonly and not s.closed
        u = uuid.uuid4()
        s.put(u, b"uuid" * 100)
        assert s.get(u.int) == b"uuid" * 100 and u in s
        assert s.get(5) is None and s.get(5, b"d") == b"d"
        with pytest.raises(KeyError):
            s[5]
        assert s.meta(5) is None and s.meta(u).edge_id == u.int
        s.put_many([1, 2, 3], [b"one", bytearray(b"two"), memoryview(b"three")])
        assert s.get_many([3, 99, 1]) == [b"three", None, b"one"]
        assert sorted(s) == sorted([1, 2, 3, u.int])
        assert s.delete(2) is True and s.delete(2) is False and 2 not in s
        del s[3]
        with pytest.raises(KeyError):
            del s[3]
        assert s.pop(1) == b"one" and s.pop(1, None) is None
        with pytest.raises(KeyError):
            s.pop(1)
        st = s.stats()
        assert isinstance(st, StoreStats) and st.entries == 1 == len(s)
        fd, off, n = s.put(7, b"plain", compression=Compression.NONE) and s.payload_range(7)
        assert os.pread(fd, n, off) == b"plain"
        assert s.payload_range(u) is None          # compressed
        assert s.payload_range(12345) is None
        s.save()
        s.verify()
    assert s.closed
    with pytest.raises(IndexClosedError):
        s.get(7)
    s.close()                                      # idempotent


def test_numpy_keys(store_dir):
    np = pytest.importorskip("numpy")
    from diskhash import KEY_DTYPE
    with PayloadStore(store_dir) as s:
        s.put_many(np.arange(5, dtype=np.uint64), [b"%d" % i for i in range(5)])
        keys = np.zeros(2, dtype=KEY_DTYPE)
        keys["lo"] = [1, 7]
        keys["hi"] = [0, 1]
        s.put_many(keys, [b"a", b"b"])
        assert s.get(1) == b"a" and s.get(7 + (1 << 64)) == b"b" and s.get(np.uint64(3)) == b"3"
        assert s.get_many(np.array([4, 9], dtype=np.uint64)) == [b"4", None]


def test_persists_across_reopen_and_readonly(store_dir):
    with PayloadStore(store_dir, compression=Compression.LZ4) as s:
        for i in range(200):
            s.put(i, b"payload %d " % i * (i % 7 + 1))
        s.delete(3)
    with PayloadStore(store_dir, readonly=True) as r:
        assert r.readonly and len(r) == 199 and 3 not in r
        assert r.get(150) == b"payload 150 " * (150 % 7 + 1)
        with pytest.raises(ReadOnlyIndexError):
            r.put(1, b"x")
        with pytest.raises(ReadOnlyIndexError):
            r.delete(1)
    with PayloadStore(store_dir) as s:
        assert s.recovery is None
        assert s.get(199) == b"payload 199 " * (199 % 7 + 1)


def test_stores_share_a_directory(store_dir):
    """Any number of opens, writable or read-only, share one store: each
    sees the others' writes (tests/processes/test_store_shared.py does it
    across processes)."""
    with PayloadStore(store_dir) as a, PayloadStore(store_dir) as b:
        a.put(1, b"from a")
        b.put(2, b"from b")
        with PayloadStore(store_dir, readonly=True) as r:
            assert (r.get(1), r.get(2)) == (b"from a", b"from b")
            assert (a.get(2), b.get(1)) == (b"from b", b"from a")
            b.delete(1)
            assert a.get(1) is None and r.get(1) is None
    with PayloadStore(store_dir, readonly=True) as r:
        with PayloadStore(store_dir) as w:
            assert w.recovery is None
            w.put(3, b"beside a reader")
            assert r.get(3) == b"beside a reader"
    with PayloadStore(store_dir) as s:
        assert s.recovery is None
        assert sorted(s.keys()) == [2, 3]


def test_readonly_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError):
        PayloadStore(tmp_path / "nope", readonly=True)
    assert not (tmp_path / "nope").exists()


def test_checksum_failure_names_id_file_offset(store_dir):
    with PayloadStore(store_dir) as s:
        m = s.put(42, b"A" * 100)
        path = s.data_path
    with open(path, "r+b") as f:
        f.seek(m.offset + 50)
        f.write(b"B")
    with PayloadStore(store_dir) as s:
        with pytest.raises(CorruptPayloadError) as ei:
            s.get(42)
        e = ei.value
        assert isinstance(e, DiskHashError) and e.edge_id == 42 and e.path == path
        assert e.offset == m.offset - 32 and "checksum" in str(e) and path in str(e)
        # skipping the check is an explicit choice
    with PayloadStore(store_dir, verify_checksums=False) as s:
        assert s.get(42) == b"A" * 50 + b"B" + b"A" * 49


def test_stored_bytes_decode_with_the_standard_codecs(store_dir):
    """PayloadMeta.offset/.length give the stored bytes; LZ4 is a raw block and ZSTD a
    standard frame (with its content size), so the plain library calls decode them."""
    lz4_block = pytest.importorskip("lz4.block")
    zstandard = pytest.importorskip("zstandard")
    text = b"interoperable payload bytes " * 64
    with PayloadStore(store_dir) as s:
        m_lz4 = s.put(1, text, compression=Compression.LZ4)
        m_zstd = s.put(2, text, compression=Compression.ZSTD)
        m_none = s.put(3, text, compression=Compression.NONE)
        path = s.data_path
    raw = Path(path).read_bytes()

    def stored(m):
        return raw[m.offset:m.offset + m.length]

    assert lz4_block.decompress(stored(m_lz4), uncompressed_size=m_lz4.uncompressed_length) == text
    assert zstandard.ZstdDecompressor().decompress(stored(m_zstd)) == text
    assert stored(m_none) == text


def test_numpy_values_as_keys_and_payloads(tmp_path):
    """A hostile pass over PayloadStore found this."""
    np = pytest.importorskip("numpy")
    with PayloadStore(tmp_path / "s") as s:
        s.put(np.uint64(5), np.arange(10, dtype=np.uint8))
        assert s.get(5) == bytes(range(10))
        s.put(np.int32(6), np.zeros((2, 3), dtype=np.float64))   # any buffer: its bytes
        assert s.get(6) == bytes(48)
        s.put(7, memoryview(b"abcdef")[::2])                      # not contiguous: copied
        assert s.get(7) == b"ace"
        with pytest.raises((ValueError, OverflowError)):
            s.put(np.int64(-1), b"x")
        with pytest.raises(TypeError):
            s.put(np.float64(1.0), b"x")
        assert len(s) == 3
