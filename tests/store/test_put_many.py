"""put_many's compiled frame builder (``_store.write.encode_frames``) writes
exactly the frames the Python encoder writes, and the store it fills reads
back as a dict model says: duplicates (the later wins), empty payloads,
128-bit keys, bytearray and memoryview payloads, pieces, a big batch.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env

from diskhash import KEY_DTYPE, META_DTYPE, Compression, PayloadStore  # noqa: E402
from diskhash._format import payload as fmt
from diskhash._store import write as _store_write  # noqa: E402
from diskhash._store.store import put_many_packed


class _EqualsBytes(type):
    """A metaclass that makes its classes equal to ``bytes`` (and hash alike)."""

    def __eq__(cls, other):
        return other is bytes or type.__eq__(cls, other)

    def __hash__(cls):
        return hash(bytes)



def _child(code: str, tmp_path, timeout: float = 120) -> str:
    """Run ``code`` in a child Python; its stdout (asserting it exited cleanly)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, f"child exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout

class _LyingBytes(bytes, metaclass=_EqualsBytes):
    def __len__(self):
        return 3


np = pytest.importorskip("numpy")


def _python_frames(store: PayloadStore, keys: "list[int]", payloads: "list[bytes]") -> bytes:
    out = []
    for k, p in zip(keys, payloads):
        ck, rest, used, slen, n = store._writer.encode(k, memoryview(p), 0)
        assert used == 0 and slen == n == len(p)
        out.append(ck + rest)
    return b"".join(out)


def test_encode_frames_matches_the_python_encoder(tmp_path):
    rng = random.Random(3)
    keys = [rng.getrandbits(rng.choice((1, 64, 128))) for _ in range(400)]
    payloads = [rng.randbytes(rng.choice((0, 1, 31, 32, 33, 1000, 5000))) for _ in keys]
    views = [p if i % 3 else memoryview(bytearray(p)) for i, p in enumerate(payloads)]
    with PayloadStore(tmp_path / "s") as s:
        want = _python_frames(s, keys, payloads)
    buf = bytearray()
    got = b""
    start = 0
    rows_k: list[tuple[int, int]] = []
    rows_m: list[tuple[int, int, int, int]] = []
    while start < len(keys):
        stop, size, key_rows, meta_rows = _store_write.encode_frames(keys, views, start, 20000, buf)
        assert stop > start
        base = len(got)
        got += bytes(buf[:size])
        karr = np.frombuffer(key_rows, dtype=KEY_DTYPE)
        marr = np.frombuffer(meta_rows, dtype=META_DTYPE)
        assert len(karr) == len(marr) == stop - start
        rows_k += [(int(a), int(b)) for a, b in zip(karr["lo"], karr["hi"])]
        rows_m += [(int(r["offset"]) + base, int(r["length"]), int(r["compression"]),
                    int(r["uncompressed_length"])) for r in marr]
        start = stop
    assert got == want
    pos = 0
    for k, p, (lo, hi), (off, n, comp, ulen) in zip(keys, payloads, rows_k, rows_m):
        assert (lo | hi << 64) == k
        assert (off, n, comp, ulen) == (pos + fmt.FRAME_SIZE, len(p), 0, len(p))
        pos += fmt.FRAME_SIZE + len(p)


def test_encode_frames_bad_arguments():
    buf = bytearray()
    with pytest.raises(ValueError):
        _store_write.encode_frames([1, 2], [b"a"], 0, 100, buf)
    with pytest.raises(ValueError):
        _store_write.encode_frames([1], [b"a"], 1, 100, buf)
    with pytest.raises(ValueError):
        _store_write.encode_frames([1], [b"a"], -1, 100, buf)
    with pytest.raises(TypeError):
        _store_write.encode_frames((1,), [b"a"], 0, 100, buf)
    with pytest.raises(TypeError):
        _store_write.encode_frames([1], [b"a"], 0, 100, b"not a bytearray")
    with pytest.raises(TypeError):
        _store_write.encode_frames([1], ["text"], 0, 100, buf)
    for bad_key, exc in ((-1, OverflowError), (2**128, OverflowError), ("1", TypeError)):
        with pytest.raises(exc):
            _store_write.encode_frames([bad_key], [b"a"], 0, 100, buf)


@pytest.mark.parametrize("n", [100, 5000])
def test_put_many_reads_back_as_the_model(tmp_path, n):
    """Under and over PUT_MANY_RESERVE; pieces of a few KiB so a batch spans many."""
    rng = random.Random(n)
    keys = [rng.getrandbits(rng.choice((20, 64, 128))) for _ in range(n)]
    keys += keys[: n // 10]                       # duplicates: the later wins
    payloads = [rng.randbytes(rng.randrange(0, 3000)) for _ in keys]
    kinds = [p if i % 4 else bytearray(p) for i, p in enumerate(payloads)]
    model = dict(zip(keys, payloads))
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(keys[0], b"before")
        s.put_many(keys, kinds)
        assert len(s) == len(model)
        assert s.get_many(list(model)) == list(model.values())
        s.verify()
    with PayloadStore(d, readonly=True) as s:
        for k, v in model.items():
            assert s.get(k) == v
    with PayloadStore(d) as s:                      # a rebuild from the log agrees
        s.rebuild_index()
        assert s.get_many(list(model)) == list(model.values())


def test_put_many_small_pieces(tmp_path, monkeypatch):
    from diskhash._store import writer as _store
    monkeypatch.setattr(_store, "PUT_MANY_CHUNK", 4096)
    rng = random.Random(9)
    keys = list(range(1000))
    payloads = [rng.randbytes(rng.randrange(0, 900)) for _ in keys]
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(np.array(keys, dtype=np.uint64), payloads)
        assert s.get_many(keys) == payloads
        s.verify()


def test_put_many_compressed_takes_the_python_path(tmp_path):
    payloads = [b"abc" * 500] * 100
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(range(100), payloads, compression=Compression.LZ4)
        assert all(s.meta(k).compression == Compression.LZ4 for k in range(100))
        assert s.get_many(range(100)) == payloads



def test_payload_that_shrinks_the_lists_does_not_crash(tmp_path):
    """A payload whose __len__ empties the list: RuntimeError, never a read
    past the list (in a child: a regression would crash)."""
    code = """
import pytest
from diskhash._store import write as _store_write
payloads = []
class Shrinking:
    def __len__(self):
        payloads.clear()
        return 3
payloads.extend([Shrinking(), b"b", b"c"])
with pytest.raises(RuntimeError, match="changed size"):
    _store_write.encode_frames([1, 2, 3], payloads, 0, 100, bytearray())
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


# ---------------------------------------------------------------------------
# put_many over a numpy key array: encode_frames_u128, no Python int per key

def _key_array(keys: "list[int]") -> "np.ndarray":
    arr = np.empty(len(keys), dtype=KEY_DTYPE)
    arr["lo"] = [k & (2**64 - 1) for k in keys]
    arr["hi"] = [k >> 64 for k in keys]
    return arr


def test_encode_frames_u128_matches_encode_frames():
    rng = random.Random(11)
    keys = [rng.getrandbits(rng.choice((1, 64, 128))) for _ in range(300)]
    payloads = [rng.randbytes(rng.choice((0, 7, 1000))) for _ in keys]
    pairs = _key_array(keys).view(np.uint64)
    for start in (0, 17, 299):
        a, b = bytearray(), bytearray()
        want = _store_write.encode_frames(keys, payloads, start, 5000, a)
        got = _store_write.encode_frames_u128(pairs, payloads, start, 5000, b)
        assert got[:2] == want[:2] and bytes(got[2]) == bytes(want[2]) and got[3] == want[3]
        assert a[:want[1]] == b[:got[1]]


def test_encode_frames_u128_bad_arguments():
    buf = bytearray()
    with pytest.raises(ValueError, match="not pairs"):
        _store_write.encode_frames_u128(np.zeros(3, dtype=np.uint64), [b"a"], 0, 100, buf)
    with pytest.raises(ValueError):
        _store_write.encode_frames_u128(np.zeros(4, dtype=np.uint64), [b"a"], 0, 100, buf)
    with pytest.raises(ValueError):
        _store_write.encode_frames_u128(np.zeros(2, dtype=np.uint64), [b"a"], 1, 100, buf)
    with pytest.raises(ValueError):          # not uint64 (a float array): refused by the memoryview
        _store_write.encode_frames_u128(np.zeros(2, dtype=np.float64), [b"a"], 0, 100, buf)
    with pytest.raises(TypeError):
        _store_write.encode_frames_u128(np.zeros(2, dtype=np.uint64), ["text"], 0, 100, buf)


@pytest.mark.parametrize("kind", ["key_dtype", "uint64", "uint32", "strided"])
def test_put_many_numpy_keys_write_what_int_keys_write(tmp_path, kind):
    """A numpy key array gives byte for byte the data file (and the same
    index answers) as the same keys as a list of ints; duplicates: the later wins."""
    rng = random.Random(5)
    wide = kind in ("key_dtype", "strided")
    keys = [rng.getrandbits(128 if wide else 32) for _ in range(3000)]
    keys += keys[:300]
    payloads = [rng.randbytes(rng.randrange(0, 400)) for _ in keys]
    if kind == "key_dtype":
        arr = _key_array(keys)
    elif kind == "strided":
        arr = _key_array([k for pair in zip(keys, keys) for k in pair])[::2]
    else:
        arr = np.array(keys, dtype=np.uint64 if kind == "uint64" else np.uint32)
    with PayloadStore(tmp_path / "ints") as a, PayloadStore(tmp_path / "arr") as b:
        a.put_many(keys, payloads)
        b.put_many(arr, payloads)
        model = dict(zip(keys, payloads))
        assert len(b) == len(model)
        assert b.get_many(list(model)) == list(model.values())
        assert [b.meta(k) for k in model] == [a.meta(k) for k in model]
        b.verify()
    logs = sorted(p.name for p in (tmp_path / "ints").glob("data-*.dat"))
    assert logs
    for name in logs:
        assert (tmp_path / "ints" / name).read_bytes() == (tmp_path / "arr" / name).read_bytes(), name


def test_put_many_numpy_keys_bad_input_changes_nothing(tmp_path):
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"kept")
        with pytest.raises(ValueError, match="edge ids"):
            s.put_many(np.arange(100, dtype=np.uint64), [b"x"] * 99)
        with pytest.raises(TypeError):
            s.put_many(np.arange(100, dtype=np.uint64), [b"x"] * 99 + ["str"])
        with pytest.raises(OverflowError):
            s.put_many(np.array([5, -1] * 50, dtype=np.int64), [b"x"] * 100)
        assert len(s) == 1 and s.get(1) == b"kept"


def test_put_many_numpy_keys_undo_when_indexing_fails(tmp_path, monkeypatch):
    """insert_many failing after a piece's frames are written: the piece is
    undone (its frames never replay) and the keys it reports are the array's."""
    from diskhash._store import writer as _store
    keys = _key_array([(7 << 64) | i for i in range(200)])
    seen = []
    real = _store._frame_rows

    def spy(piece, views, start):
        seen.extend(piece)
        return real(piece, views, start)

    monkeypatch.setattr(_store, "_frame_rows", spy)
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"kept")
        s.save()
        from diskhash._index import batch as _batch

        def boom(index, k, r):
            raise OSError(28, "No space left on device (injected)")

        monkeypatch.setattr(_batch, "insert_many", boom)
        with pytest.raises(OSError, match="injected"):
            s.put_many(keys, [b"p%d" % i for i in range(200)])
        monkeypatch.undo()
        assert seen == [(7 << 64) | i for i in range(200)]
        assert len(s) == 1
    with PayloadStore(d) as s:                  # reopen: nothing of the batch replays
        assert len(s) == 1 and s.get(1) == b"kept"
        assert s.get((7 << 64) | 5) is None


# ---------------------------------------------------------------------------
# put_many_packed: the sharded build's writers, (keys, ends, data) pieces

def _packed_piece(keys: "list[int]", payloads: "list[bytes]"):
    ends = np.cumsum([len(p) for p in payloads], dtype=np.int64)
    return _key_array(keys), ends, memoryview(b"".join(payloads))


def test_encode_frames_packed_matches_encode_frames():
    rng = random.Random(12)
    keys = [rng.getrandbits(rng.choice((1, 64, 128))) for _ in range(300)]
    payloads = [rng.randbytes(rng.choice((0, 7, 1000))) for _ in keys]
    karr, ends, data = _packed_piece(keys, payloads)
    pairs = karr.view(np.uint64)
    for start in (0, 17, 299):
        a, b = bytearray(), bytearray()
        want = _store_write.encode_frames(keys, payloads, start, 5000, a)
        got = _store_write.encode_frames_packed(pairs, ends, data, start, 5000, b)
        assert got[:2] == want[:2] and bytes(got[2]) == bytes(want[2]) and got[3] == want[3]
        assert a[:want[1]] == b[:got[1]]


def test_encode_frames_packed_bad_ends():
    buf = bytearray()
    pairs = np.zeros(4, dtype=np.uint64)
    for ends, data in (([3, 2], b"abc"), ([2, 9], b"abc"), ([-1, 2], b"abc")):
        with pytest.raises(ValueError, match="outside"):
            _store_write.encode_frames_packed(pairs, np.array(ends, dtype=np.int64), data, 0, 100, buf)
    with pytest.raises(ValueError):
        _store_write.encode_frames_packed(pairs, np.array([1], dtype=np.int64), b"a", 0, 100, buf)


def test_put_many_packed_writes_what_put_many_writes(tmp_path):
    rng = random.Random(13)
    keys = [rng.getrandbits(128) for _ in range(5000)]
    keys += keys[:500]                                  # the later duplicate wins
    payloads = [rng.randbytes(rng.randrange(0, 700)) for _ in keys]
    cut = 3000
    pieces = [_packed_piece(keys[:cut], payloads[:cut]), _packed_piece(keys[cut:], payloads[cut:])]
    with PayloadStore(tmp_path / "a") as a, PayloadStore(tmp_path / "b") as b:
        a.put_many(keys, payloads)
        assert put_many_packed(b, pieces) is True
        model = dict(zip(keys, payloads))
        assert len(b) == len(model)
        assert b.get_many(list(model)) == list(model.values())
        assert [b.meta(k) for k in model] == [a.meta(k) for k in model]
        b.verify()
    for log in sorted((tmp_path / "a").glob("data-*.dat")):
        assert log.read_bytes() == (tmp_path / "b" / log.name).read_bytes()


def test_put_many_packed_bad_pieces_write_nothing(tmp_path):
    good = _packed_piece([1, 2], [b"ab", b"cd"])
    bad_pieces = [
        (good[0], np.array([2, 1], dtype=np.int64), good[2]),           # backwards
        (good[0], np.array([2, 5], dtype=np.int64), good[2]),           # past the data
        (good[0], np.array([2], dtype=np.int64), good[2]),              # one end short
        (np.array([1, 2], dtype=np.uint64), good[1], good[2]),          # not KEY_DTYPE
    ]
    with PayloadStore(tmp_path / "s") as s:
        s.put(9, b"kept")
        s.save()
        size = s.stats().data_bytes
        for bad in bad_pieces:
            with pytest.raises((ValueError, TypeError)):
                put_many_packed(s, [good, bad])               # the good piece is not written either
        assert len(s) == 1 and s.stats().data_bytes == size


def test_put_many_packed_declines_a_compressing_store(tmp_path):
    with PayloadStore(tmp_path / "s", compression=Compression.LZ4) as s:
        assert put_many_packed(s, [_packed_piece([1], [b"x" * 100])]) is False
        assert len(s) == 0


def test_put_many_of_keys_already_stored_does_not_grow_the_index(tmp_path):
    # put_many reserved index room for every key of a big batch, overwrites
    # included: rewriting 6000 stored keys doubled a table that had room.
    n = 6000
    keys = np.arange(1, n + 1, dtype=np.uint64)
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(keys, [b"a"] * n)
        slots = s._writer.gen.index.stats().slots
        assert s._writer.gen.index.stats().entries == n
        s.put_many(keys, [b"b"] * n)                        # numpy pairs path
        s.put_many(keys.tolist(), [b"c"] * n)               # list of ints path
        s.put_many(keys.tolist(), [b"d"] * n, compression=Compression.NONE)
        wide = np.zeros(n, dtype=KEY_DTYPE)
        wide["lo"] = keys
        ends = np.arange(1, n + 1, dtype=np.int64)
        assert put_many_packed(s, [(wide, ends, memoryview(b"e" * n))])   # the Arrow put path
        assert s._writer.gen.index.stats().slots == slots
        assert s.get(1) == b"e" and len(s) == n
        # new keys still get their room up front
        s.put_many(np.arange(n + 1, 3 * n + 1, dtype=np.uint64), [b"f"] * (2 * n))
        assert s._writer.gen.index.stats().slots > slots and len(s) == 3 * n
        s.verify()


def test_encode_frames_packed_ends_written_during_the_copy(tmp_path):
    """Another thread moving an end far past the data while the GIL-free copy
    runs: the copy read the end again and wrote past the blob (segfault).

    A hostile pass over the packed and numpy-keyed put_many found this.  The
    end flips all the time, so most copies meet it flipped: a few copies
    show the old bug; the slow twin makes a hundred.
    """
    _ends_written_during_the_copy(tmp_path, 12)


@pytest.mark.slow
def test_encode_frames_packed_ends_written_during_a_hundred_copies(tmp_path):
    _ends_written_during_the_copy(tmp_path, 100)


def _ends_written_during_the_copy(tmp_path, rounds: int) -> None:
    out = _child("""
        import threading
        import numpy as np
        from diskhash._store.write import encode_frames_packed
        n = 200_000
        pairs = np.zeros(2 * n, dtype=np.uint64)
        ends = np.arange(1, n + 1, dtype=np.int64) * 100
        data = bytes(100 * n)
        done = False
        def flip():
            while not done:
                ends[n // 2] = 10**12
                ends[n // 2] = (n // 2 + 1) * 100
        t = threading.Thread(target=flip)
        t.start()
        ok = 0
        try:
            for _ in range(ROUNDS):
                buf = bytearray()
                try:
                    stop, size, krows, mrows = encode_frames_packed(pairs, ends, data, 0, 1 << 40, buf)
                except ValueError:
                    continue
                assert (stop, size) == (n, 132 * n)
                ok += 1
        finally:
            done = True
            t.join()
        print("ok", ok)
    """.replace("ROUNDS", str(rounds)), tmp_path)
    assert out.startswith("ok")


def test_encode_frames_packed_end_before_start_is_refused():
    """``ends[start - 1]`` (where record ``start`` begins) was not checked: a
    negative one copied the bytes in front of ``data`` into the frame.

    A hostile pass over the packed and numpy-keyed put_many found this.
    """
    secret = b"S" * 64 + b"abcd"
    data = memoryview(secret)[64:]
    pairs = np.zeros(4, dtype=np.uint64)
    buf = bytearray()
    for ends in ([-64, 4], [9, 4]):
        with pytest.raises(ValueError, match="outside"):
            _store_write.encode_frames_packed(pairs, np.array(ends, dtype=np.int64), data, 1, 100, buf)
    assert b"S" not in buf
    # start 1 of good ends still works
    stop, size, _, _ = _store_write.encode_frames_packed(
        pairs, np.array([1, 4], dtype=np.int64), data, 1, 100, buf)
    assert (stop, size) == (2, 32 + 3) and bytes(buf[32:35]) == b"bcd"


def test_put_many_packed_checks_every_piece_before_writing(tmp_path):
    """A later piece whose data is not flat bytes or whose ends are not a 1-D
    integer array: refused before the first piece is written (the compiled
    call refused it after earlier pieces were stored), and float ends are
    not truncated into other payload boundaries.

    A hostile pass over the packed and numpy-keyed put_many found this.
    """
    good = (_key_array([1, 2]), np.array([2, 4], dtype=np.int64), b"abcd")
    keys, ends = _key_array([3, 4]), np.array([2, 4], dtype=np.int64)
    bad_pieces = [
        (keys, ends, memoryview(b"aXbXcXdX")[::2]),            # not contiguous
        (keys, np.array([[2], [4]], dtype=np.int64), b"abcd"),  # 2-D ends
        (keys, np.array([1.5, 3.9]), b"abcd"),                  # float ends
        (keys, ends, "abcd"),                                   # str
    ]
    with PayloadStore(tmp_path / "s") as s:
        s.put(9, b"kept")
        s.save()
        size = s.stats().data_bytes
        for bad in bad_pieces:
            with pytest.raises(TypeError):
                put_many_packed(s, [good, bad])
            assert len(s) == 1 and s.stats().data_bytes == size
        # flat views of other formats are their bytes, as put_many takes them
        assert put_many_packed(s, [good, (keys, ends, np.frombuffer(b"wxyz", dtype=np.int8)),
                                   (_key_array([5]), [4], memoryview(b"pqrs").cast("B", (2, 2)))])
        assert s.get_many([1, 2, 3, 4, 5]) == [b"ab", b"cd", b"wx", b"yz", b"pqrs"]


def test_put_many_masked_key_array_is_not_written_under_hidden_keys(tmp_path):
    """A numpy masked array of keys: a masked key is refused, as put_many
    always did (the numpy fast path stored the value hidden under the mask).

    A hostile pass over the packed and numpy-keyed put_many found this.
    """
    keys = np.ma.masked_array(np.arange(100, dtype=np.uint64), mask=[i == 5 for i in range(100)])
    with PayloadStore(tmp_path / "s") as s:
        with pytest.raises(TypeError):
            s.put_many(keys, [b"x"] * 100)
        assert len(s) == 0
        s.put_many(np.ma.masked_array(np.arange(100, dtype=np.uint64)), [b"y"] * 100)
        assert len(s) == 100 and s.get(99) == b"y"


@pytest.mark.parametrize("n,compression", [(10, None), (100, None), (10, Compression.LZ4)])
def test_put_many_bytes_subclass_equal_to_bytes_with_a_lying_len(tmp_path, n, compression):
    """A set of the payloads' types took a bytes subclass that compares equal
    to ``bytes`` for ``bytes``: its lying ``__len__`` went into the frame
    headers, and the log was damaged beyond reopening (or the fast path
    raised midway).  Every payload is stored whole, as its bytes.

    A hostile pass over the packed and numpy-keyed put_many found this.
    """
    pytest.importorskip("lz4") if compression else None
    real = b"abcdefgh" * 20
    payloads = [b"first"] + [_LyingBytes(real)] * (n - 1)
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(np.arange(n, dtype=np.uint64), payloads, compression=compression)
        assert s.get_many(list(range(n))) == [b"first"] + [real] * (n - 1)
        s.verify()
    with PayloadStore(tmp_path / "s") as s:
        assert len(s) == n and s.get(n - 1) == real


def test_signed_structured_key_array_is_refused_before_any_write(tmp_path):
    """A hostile pass over PayloadStore and ShardedStore found this."""
    np = pytest.importorskip("numpy")
    keys = np.array([(5, 0), (-2, 0)], dtype=[("lo", "<i8"), ("hi", "<i8")])
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        size = s.stats().data_bytes
        with pytest.raises(OverflowError, match="outside"):
            s.put_many(keys, [b"a", b"b"])
        with pytest.raises(OverflowError, match="outside"):
            s.get_many(keys)
        assert s.stats().data_bytes == size and len(s) == 1
        ok = np.array([(5, 0), (6, 1)], dtype=[("lo", "<i8"), ("hi", "<i8")])
        s.put_many(ok, [b"a", b"b"])
        assert s.get_many([5, 6 | (1 << 64)]) == [b"a", b"b"]


def test_encode_frames_key_that_resizes_the_blob(tmp_path):
    """A key whose ``__index__`` shrinks the output bytearray mid-loop: an
    error, never a copy into the freed buffer (it crashed the interpreter).

    A hostile pass over the compiled store paths found this.
    """
    out = _child("""
        import pytest
        from diskhash._store.write import encode_frames
        blob = bytearray(1 << 20)
        class Shrinker:
            def __index__(self):
                blob.clear()
                blob.extend(b"x" * 10)
                return 5
        keys = [1, Shrinker(), 3]
        payloads = [b"a" * 300_000, b"b" * 300_000, b"c" * 300_000]
        with pytest.raises(BufferError):
            encode_frames(keys, payloads, 0, 1 << 30, blob)
        # the ordinary call still works on the same buffer
        stop, size, krows, mrows = encode_frames([1, 2], [b"x", b"yy"], 0, 1 << 30, blob)
        assert (stop, size, len(krows), len(mrows)) == (2, 67, 32, 48)
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


@pytest.mark.skipif(sys.version_info < (3, 12), reason="__buffer__ (PEP 688) is 3.12+")
def test_encode_frames_payload_buffer_that_resizes_the_blob(tmp_path):
    """The same through a payload's ``__buffer__``, which ``encode_frames``'
    buffer request runs mid-loop.

    A hostile pass over the compiled store paths found this.
    """
    out = _child("""
        import pytest
        from diskhash._store.write import encode_frames
        blob = bytearray(1 << 20)
        class Payload:
            def __len__(self):
                return 300_000
            def __buffer__(self, flags):
                blob.clear()
                blob.extend(b"q" * 5)
                return memoryview(b"z" * 300_000)
        with pytest.raises(BufferError):
            encode_frames([1, 2], [b"a" * 300_000, Payload()], 0, 1 << 30, blob)
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"
