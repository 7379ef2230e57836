"""Arrow batches: get_many_arrow (one LargeBinaryArray) and put_many of Arrow keys and payloads."""

from __future__ import annotations

import mmap
import subprocess
import sys

import numpy as np
import pytest
from helpers.processes import subprocess_env

from diskhash import (
    AsyncPayloadStore,
    AsyncShardedStore,
    Compression,
    CorruptPayloadError,
    PayloadStore,
    ShardedStore,
)
from diskhash._format import payload as fmt

pa = pytest.importorskip("pyarrow")
arrow_fill = pytest.importorskip("diskhash._store.arrow_fill")

CODECS = list(Compression)


def payloads_of(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    # compressible and not, empty ones included
    return [bytes(rng.integers(0, 4, size=int(rng.integers(0, 400)), dtype=np.uint8)) * (i % 3)
            for i in range(n)]


def key16(keys: list[int]) -> "pa.FixedSizeBinaryArray":
    return pa.array([k.to_bytes(16, "little") for k in keys], type=pa.binary(16))


def big_keys(n: int) -> list[int]:
    return [(i * 0x9E3779B97F4A7C15) % (1 << 128) | (i << 100) for i in range(1, n + 1)]


@pytest.fixture(params=CODECS, ids=[c.name for c in CODECS])
def filled(request, tmp_path):
    keys = big_keys(700)
    values = payloads_of(700)
    with PayloadStore(tmp_path / "s", compression=request.param) as store:
        store.put_many(keys, values)
        yield store, keys, values


# -- out ---------------------------------------------------------------------------------

def test_get_many_arrow_matches_get_in_order_with_nulls(filled):
    store, keys, values = filled
    asked = keys[::-1] + [5, 6]
    got = store.get_many_arrow(asked)
    assert isinstance(got, pa.LargeBinaryArray) and len(got) == len(asked)
    assert got.to_pylist() == values[::-1] + [None, None]
    assert got.null_count == 2
    got.validate(full=True)


@pytest.mark.parametrize("codecs_in_c", [True, False], ids=["c-codecs", "python-codecs"])
def test_get_many_arrow_every_codec_with_and_without_the_c_libraries(filled, codecs_in_c):
    store, keys, values = filled
    arrow_fill.use_c_codecs(codecs_in_c, codecs_in_c)
    try:
        assert store.get_many_arrow(keys).to_pylist() == values
    finally:
        arrow_fill.use_c_codecs(True, True)


def test_get_many_arrow_key_forms(filled):
    store, keys, values = filled
    want = pa.array(values, type=pa.large_binary())
    k16 = key16(keys)
    assert store.get_many_arrow(k16).equals(want)
    # sliced: the array's offset must be honoured
    assert store.get_many_arrow(k16.slice(100, 50)).equals(want.slice(100, 50))
    # chunked, with an empty chunk
    chunked = pa.chunked_array([k16.slice(0, 10), k16.slice(10, 0), k16.slice(10)])
    assert store.get_many_arrow(chunked).equals(want)
    lo = pa.array([k & (2**64 - 1) for k in keys], type=pa.uint64())
    hi = pa.array([k >> 64 for k in keys], type=pa.uint64())
    assert store.get_many_arrow(pa.StructArray.from_arrays([lo, hi], ["lo", "hi"])).equals(want)
    assert store.get_many_arrow(pa.table({"hi": hi, "lo": lo})).equals(want)
    from diskhash._index.dtypes import KEY_DTYPE
    karr = np.zeros(len(keys), dtype=KEY_DTYPE)
    karr["lo"], karr["hi"] = lo.to_numpy(), hi.to_numpy()
    assert store.get_many_arrow(karr).equals(want)
    # the list get_many takes Arrow keys too
    assert store.get_many(k16.slice(3, 4)) == values[3:7]


def test_get_many_arrow_unsigned_integer_keys(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(100)), [b"%d" % i for i in range(100)])
        got = store.get_many_arrow(pa.array(range(98, 103), type=pa.uint32()))
        assert got.to_pylist() == [b"98", b"99", None, None, None]
        assert store.get_many_arrow(np.arange(3, dtype=np.uint64)).to_pylist() == [b"0", b"1", b"2"]


def test_get_many_arrow_empty(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        assert len(store.get_many_arrow([])) == 0
        assert len(store.get_many_arrow(pa.array([], type=pa.binary(16)))) == 0
        store.put(1, b"")
        got = store.get_many_arrow([1, 2])
        assert got.to_pylist() == [b"", None]


def test_get_many_arrow_bad_keys(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        with pytest.raises(ValueError, match=r"edge_ids\[1\] is null"):
            store.get_many_arrow(pa.array([b"a" * 16, None], type=pa.binary(16)))
        with pytest.raises(TypeError, match="fixed_size_binary"):
            store.get_many_arrow(pa.array([b"a" * 8], type=pa.binary(8)))
        with pytest.raises(TypeError, match="fixed_size_binary"):
            store.get_many_arrow(pa.array(["x"]))
        with pytest.raises(ValueError):
            store.get_many_arrow([-1])


def test_get_many_arrow_reports_a_damaged_record(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(10)), [bytes([i]) * 100 for i in range(10)])
        meta = store.meta(4)
        path = store.data_path
    with open(path, "r+b") as f:
        f.seek(meta.offset + 10)
        f.write(b"\xff")
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        with pytest.raises(CorruptPayloadError, match="checksum"):
            store.get_many_arrow(list(range(10)))
    with PayloadStore(tmp_path / "s", readonly=True, verify_checksums=False) as store:
        assert len(store.get_many_arrow(list(range(10)))) == 10


@pytest.mark.parametrize("where", [0, 57, 99], ids=["first-byte", "middle", "last-byte"])
def test_get_many_arrow_finds_damage_in_any_record_of_a_batch(tmp_path, where):
    """Uncompressed frames are checksummed three at a time while copied:
    a damaged byte in any of the three (and in the one or two left over at
    the end), at the start, inside or in the tail of the payload, is found."""
    lengths = [100, 100, 100, 37, 100, 8, 100, 100, 100, 100, 100]
    keys = list(range(1, len(lengths) + 1))
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(keys, [bytes([k]) * n for k, n in zip(keys, lengths)])
        metas = [store.meta(k) for k in keys]
        path = store.data_path
    for i, meta in enumerate(metas):
        at = min(where, meta.length - 1)
        with open(path, "r+b") as f:
            f.seek(meta.offset + at)
            f.write(bytes([keys[i] ^ 0xFF]))
        with PayloadStore(tmp_path / "s", readonly=True) as store:
            with pytest.raises(CorruptPayloadError, match="checksum"):
                store.get_many_arrow(keys)
            others = keys[:i] + keys[i + 1:]
            assert store.get_many_arrow(others).to_pylist() == [bytes([k]) * lengths[k - 1] for k in others]
        with open(path, "r+b") as f:
            f.seek(meta.offset + at)
            f.write(bytes([keys[i]]))


@pytest.mark.parametrize("sizes", ["aligned", "unaligned"])
def test_get_many_arrow_of_a_result_written_with_streaming_stores(tmp_path, sizes):
    """A result of 4 MiB or more is written with non-temporal stores where
    the destinations are 8-byte aligned (1 KiB payloads), with normal ones
    where not: the same bytes either way, and damage still found."""
    rng = np.random.default_rng(11)
    n = 5000
    lengths = [1024] * n if sizes == "aligned" else [int(x) for x in rng.integers(900, 1100, n)]
    values = [rng.bytes(m) for m in lengths]
    keys = [int(k) for k in rng.permutation(10 * n)[:n] + 1]
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(keys, values)
        asked = keys[::-1] + [0]
        got = store.get_many_arrow(asked)
        assert sum(lengths) >= 4 << 20
        assert got.to_pylist() == values[::-1] + [None]
        meta = store.meta(keys[1234])
        path = store.data_path
    with open(path, "r+b") as f:
        f.seek(meta.offset + meta.length - 1)
        last = f.read(1)
        f.seek(meta.offset + meta.length - 1)
        f.write(bytes([last[0] ^ 1]))
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        with pytest.raises(CorruptPayloadError, match="checksum"):
            store.get_many_arrow(keys)


def test_get_many_arrow_reads_records_past_the_map(tmp_path):
    """Records appended after the map was made are read through the Python
    path (a remap), not refused."""
    with PayloadStore(tmp_path / "s") as store:
        store.put(1, b"a")
        store.get_many_arrow([1])
        store.put_many(list(range(2, 3000)), [b"x" * 1000] * 2998)
        got = store.get_many_arrow(list(range(1, 3000)))
        assert got.to_pylist() == [b"a"] + [b"x" * 1000] * 2998


# -- in ----------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS, ids=[c.name for c in CODECS])
@pytest.mark.parametrize("kind", ["binary", "large_binary"])
def test_put_many_arrow_round_trips(tmp_path, codec, kind):
    keys = big_keys(500)
    values = payloads_of(500, seed=1)
    arr = pa.array(values, type=getattr(pa, kind)())
    with PayloadStore(tmp_path / "s", compression=codec) as store:
        store.put_many(key16(keys), arr)
        assert store.get_many(keys) == values
        assert store.get_many_arrow(keys).to_pylist() == values


def test_put_many_arrow_sliced_and_chunked(tmp_path):
    values = payloads_of(300, seed=2)
    arr = pa.array(values, type=pa.binary())
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(100)), arr.slice(50, 100))        # offset 50: payloads 50..149
        assert store.get_many(list(range(100))) == values[50:150]
        chunked = pa.chunked_array([arr.slice(0, 7), arr.slice(7, 0), arr.slice(7, 293)])
        store.put_many(key16(list(range(1000, 1300))), chunked)
        assert store.get_many(list(range(1000, 1300))) == values
        store.put_many([], pa.array([], type=pa.large_binary()))
        store.put_many(pa.array([], type=pa.binary(16)), pa.chunked_array([], type=pa.binary()))
        assert len(store) == 400


def test_put_many_arrow_in_many_packed_pieces(tmp_path, monkeypatch):
    """The packed path encodes and appends pieces of about PACKED_CHUNK bytes
    (small, to stay in the CPU's cache): a batch spanning many pieces, a
    payload larger than a piece among them, comes back whole and in order,
    and survives a reopen (each piece's frames replayable or indexed)."""
    from diskhash._store import writer as _writer
    monkeypatch.setattr(_writer, "PACKED_CHUNK", 1000)
    values = payloads_of(400, seed=3)
    values[123] = bytes(range(256)) * 20           # 5120 bytes: a piece of its own
    keys = big_keys(400)
    pieces = []
    real = _writer._encode_frames_packed

    def counted(*args):
        out = real(*args)
        pieces.append(out[0])
        return out

    monkeypatch.setattr(_writer, "_encode_frames_packed", counted)
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(key16(keys), pa.array(values, type=pa.large_binary()))
        assert store.get_many(keys) == values
    assert len(pieces) > 20 and pieces[-1] == 400
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        assert store.get_many_arrow(keys).to_pylist() == values


def test_put_many_arrow_numpy_and_list_keys(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(np.arange(5, dtype=np.uint64), pa.array([b"a", b"b", b"c", b"d", b"e"]))
        store.put_many([10, 11], pa.array([b"x", b"y"], type=pa.large_binary()))
        assert store.get_many([0, 4, 10, 11]) == [b"a", b"e", b"x", b"y"]


def test_put_many_arrow_refuses_nulls_and_stores_nothing(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        with pytest.raises(ValueError, match=r"payloads\[2\] is null"):
            store.put_many([1, 2, 3], pa.array([b"a", b"b", None]))
        chunked = pa.chunked_array([pa.array([b"a", b"b"]), pa.array([b"c", None])])
        with pytest.raises(ValueError, match=r"payloads\[3\] is null"):
            store.put_many([1, 2, 3, 4], chunked)
        with pytest.raises(ValueError, match=r"edge_ids\[0\] is null"):
            store.put_many(pa.array([None, b"k" * 16], type=pa.binary(16)), pa.array([b"a", b"b"]))
        assert len(store) == 0


@pytest.mark.parametrize("bad", [
    pa.array(["text"]),                         # a string array: cast it to binary first
    pa.array([1]),
    pa.array([[1, 2]]),
    pa.array([b"a" * 4], type=pa.binary(4)),
], ids=["string", "int", "list", "fixed4"])
def test_put_many_arrow_wrong_payload_types(tmp_path, bad):
    with PayloadStore(tmp_path / "s") as store:
        with pytest.raises(TypeError, match="binary"):
            store.put_many([1], bad)
        assert len(store) == 0


def test_put_many_arrow_count_mismatch_and_bad_keys(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        with pytest.raises(ValueError, match="2 edge ids but 3 payloads"):
            store.put_many([1, 2], pa.array([b"a", b"b", b"c"]))
        with pytest.raises(TypeError, match="unsigned"):
            store.put_many(pa.table({"lo": pa.array([1], pa.int64()), "hi": pa.array([0], pa.int64())}),
                           pa.array([b"a"]))
        with pytest.raises(TypeError):
            store.put_many(pa.array([1.5]), pa.array([b"a"]))
        assert len(store) == 0


def test_put_many_arrow_refuses_a_payload_over_the_frame_limit(tmp_path):
    """A payload over MAX_LENGTH (4 GiB - 1) is refused before anything is
    written; the 4 GiB buffer is an untouched anonymous map (no memory used)."""
    size = fmt.MAX_LENGTH + 1
    try:
        big = mmap.mmap(-1, size + 1, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, OverflowError, ValueError):
        pytest.skip("no 4 GiB anonymous map here")
    try:
        data = pa.py_buffer(big)
        offsets = pa.py_buffer(np.array([0, 1, size + 1], dtype=np.int64))
        arr = pa.Array.from_buffers(pa.large_binary(), 2, [None, offsets, data])
        with PayloadStore(tmp_path / "s") as store:
            with pytest.raises(ValueError, match=r"payloads\[1\] is 4294967296 bytes; the limit"):
                store.put_many([1, 2], arr)
            assert len(store) == 0
        del arr, data
    finally:
        big.close()


def test_put_many_arrow_read_only_and_closed(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put(1, b"a")
    from diskhash import IndexClosedError, ReadOnlyIndexError
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        with pytest.raises(ReadOnlyIndexError):
            store.put_many([2], pa.array([b"b"]))
    store.close()
    with pytest.raises(IndexClosedError):
        store.get_many_arrow([1])


# -- the async twin and the sharded stores ----------------------------------------------------

@pytest.mark.anyio
async def test_async_get_many_arrow(tmp_path):
    async with await AsyncPayloadStore.open(tmp_path / "s") as store:
        await store.put_many(key16([1, 2]), pa.array([b"one", b"two"]))
        got = await store.get_many_arrow([2, 3, 1])
        assert got.to_pylist() == [b"two", None, b"one"]


def test_sharded_get_many_arrow_in_key_order(tmp_path):
    keys = big_keys(400)
    values = payloads_of(400, seed=3)
    with ShardedStore(tmp_path / "sh", shards=4) as sh:
        sh.put_many(key16(keys), pa.array(values, type=pa.binary()))
        asked = keys[::-1] + [7]
        assert sh.get_many_arrow(asked).to_pylist() == values[::-1] + [None]
        assert sh.get_many_arrow(key16(keys[:3])).to_pylist() == values[:3]
        assert sh.get_many(key16(keys[:3])) == values[:3]
        assert len(sh.get_many_arrow([])) == 0
        with pytest.raises(ValueError, match="null"):
            sh.put_many([1, 2], pa.array([b"a", None]))
        assert len(sh) == 400


@pytest.mark.anyio
async def test_async_sharded_get_many_arrow(tmp_path):
    keys = big_keys(200)
    values = payloads_of(200, seed=4)
    ShardedStore(tmp_path / "sh", shards=3).close()
    async with await AsyncShardedStore.open(tmp_path / "sh") as sh:
        await sh.put_many(keys, pa.array(values, type=pa.large_binary()))
        got = await sh.get_many_arrow(key16(keys[::-1]))
        assert got.to_pylist() == values[::-1]


# -- pyarrow stays optional ---------------------------------------------------------------------

def test_import_diskhash_does_not_import_pyarrow():
    code = ("import sys, diskhash, diskhash.dask\n"
            "from diskhash import PayloadStore, export_parquet\n"
            "bad = [m for m in sys.modules if m.split('.')[0] == 'pyarrow']\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=subprocess_env())
    assert r.returncode == 0, r.stderr.decode()


def test_without_pyarrow_the_arrow_calls_name_the_extra(tmp_path):
    code = ("import sys\n"
            "sys.modules['pyarrow'] = None\n"
            "from diskhash import PayloadStore\n"
            f"s = PayloadStore({str(tmp_path / 's')!r})\n"
            "s.put_many([1], [b'a'])\n"
            "try:\n"
            "    s.get_many_arrow([1])\n"
            "except ImportError as e:\n"
            "    assert 'arrow' in str(e) and 'extra' in str(e), e\n"
            "else:\n"
            "    raise SystemExit('no ImportError')\n"
            "s.close()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, env=subprocess_env())
    assert r.returncode == 0, r.stderr.decode()


@pytest.mark.parametrize("fail", ["index", "encode"])
def test_put_many_arrow_overlapped_pieces_stop_at_an_error(tmp_path, monkeypatch, fail):
    """A batch of PACKED_OVERLAP pieces or more has its next piece encoded by
    a worker thread while this one writes and indexes the last: the pieces
    land in order (a key repeated in a later piece wins), and an error --
    the index refusing a piece, or the worker's encode of one -- is raised
    with the pieces before it stored, the failing one not replayed at a
    reopen, and no worker thread left behind."""
    import threading

    from diskhash._index import batch as _batch
    from diskhash._store import writer as _writer
    monkeypatch.setattr(_writer, "PACKED_CHUNK", 1000)
    values = payloads_of(400, seed=4)
    keys = big_keys(300) + big_keys(100)           # the last 100 overwrite the first 100
    threads = []
    real_encode = _writer._encode_frames_packed

    def encode(*args):
        threads.append(threading.current_thread().name)
        return real_encode(*args)

    monkeypatch.setattr(_writer, "_encode_frames_packed", encode)
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(key16(keys), pa.array(values, type=pa.large_binary()))
        assert store.get_many(keys[100:]) == values[100:]
        assert len(store) == 300
    assert len(threads) > 20 and any(t.startswith("diskhash-encode") for t in threads)

    calls = []
    real_insert = _batch.insert_many

    def insert_many(index, k, r):
        calls.append(len(k))
        if fail == "index" and len(calls) == 5:
            raise OSError(28, "No space left on device (injected)")
        return real_insert(index, k, r)

    encoded = []

    def failing_encode(*args):
        encoded.append(args[3])
        if len(encoded) == 6:
            raise ValueError("payload ends changed (injected)")
        return real_encode(*args)

    monkeypatch.setattr(_batch, "insert_many", insert_many)
    if fail == "encode":
        monkeypatch.setattr(_writer, "_encode_frames_packed", failing_encode)
    fresh = [k + 1 for k in big_keys(400)]
    with PayloadStore(tmp_path / "t") as store:
        with pytest.raises((OSError, ValueError), match="injected"):
            store.put_many(key16(fresh), pa.array(values, type=pa.large_binary()))
        stored = len(store)
        assert len(calls) == 5                      # the fifth piece refused, or the sixth not encoded
        assert stored == sum(calls[:4] if fail == "index" else calls) and 0 < stored < 400
        assert store.get_many(fresh[:stored]) == values[:stored]
        assert store.get(fresh[stored]) is None
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.name.startswith("diskhash-encode")]
    with PayloadStore(tmp_path / "t") as store:            # reopen: nothing more replays
        assert len(store) == stored and store.get(fresh[stored]) is None
        store.verify()


@pytest.mark.parametrize("overlap", [False, True], ids=["one-buffer", "overlapped"])
def test_put_many_arrow_pieces_when_another_thread_holds_a_frame(tmp_path, monkeypatch, overlap):
    # Dask's sampling profiler holds its worker threads' frames: a view of a
    # piece's buffer left to the refcount stayed exported, and the next
    # piece's encode could not resize the buffer (BufferError in a Dask
    # build).  The writes' views are released, whoever holds their frames.
    import diskhash._store.writer as writer_module
    from diskhash._index.dtypes import KEY_DTYPE
    held = []
    real = writer_module.write_all

    def holding(fd, buffers, offset):
        held.append(buffers)            # as a frame held by another thread would
        return real(fd, buffers, offset)

    monkeypatch.setattr(writer_module, "write_all", holding)
    if overlap:
        monkeypatch.setattr(writer_module, "PACKED_OVERLAP", 1)
    small, big = [b"s%05d" % i * 16 for i in range(9000)], [b"B%05d" % i * 700 for i in range(600)]
    payloads = small + big              # (the later pieces need a bigger buffer)
    keys = np.zeros(len(payloads), dtype=KEY_DTYPE)
    keys["lo"] = np.arange(1, len(payloads) + 1)
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(keys, pa.array(payloads, type=pa.large_binary()))
        assert len(held) >= 3
        assert store.get_many(list(range(1, len(payloads) + 1))) == payloads
