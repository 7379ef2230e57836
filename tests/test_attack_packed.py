"""Hostile pass over the packed and numpy-keyed ``put_many`` paths.

``_store_write.encode_frames_packed`` copies without the GIL, so another
thread runs Python code in the middle of it: whatever that thread can write
(the caller's key and end arrays) must not steer a copy outside the buffers.
``PayloadStore._put_many_packed`` promises to check every piece before it
writes any.  Crash regressions run in a child process with a timeout, so a
regression fails the test instead of killing the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env

np = pytest.importorskip("numpy")

from diskhash import KEY_DTYPE, Compression, PayloadStore, _store_write  # noqa: E402


def _child(code: str, tmp_path, timeout: float = 120) -> str:
    """Run ``code`` in a child Python; its stdout (asserting it exited cleanly)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, f"child exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def _key_array(keys: "list[int]"):
    arr = np.zeros(len(keys), dtype=KEY_DTYPE)
    arr["lo"] = [k & (2**64 - 1) for k in keys]
    arr["hi"] = [k >> 64 for k in keys]
    return arr


def test_encode_frames_packed_ends_written_during_the_copy(tmp_path):
    """Another thread moving an end far past the data while the GIL-free copy
    runs: the copy read the end again and wrote past the blob (segfault)."""
    out = _child("""
        import threading
        import numpy as np
        from diskhash._store_write import encode_frames_packed
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
            for _ in range(100):
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
    """, tmp_path)
    assert out.startswith("ok")


def test_encode_frames_packed_end_before_start_is_refused():
    """``ends[start - 1]`` (where record ``start`` begins) was not checked: a
    negative one copied the bytes in front of ``data`` into the frame."""
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
    not truncated into other payload boundaries."""
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
                s._put_many_packed([good, bad])
            assert len(s) == 1 and s.stats().data_bytes == size
        # flat views of other formats are their bytes, as put_many takes them
        assert s._put_many_packed([good, (keys, ends, np.frombuffer(b"wxyz", dtype=np.int8)),
                                   (_key_array([5]), [4], memoryview(b"pqrs").cast("B", (2, 2)))])
        assert s.get_many([1, 2, 3, 4, 5]) == [b"ab", b"cd", b"wx", b"yz", b"pqrs"]


def test_put_many_masked_key_array_is_not_written_under_hidden_keys(tmp_path):
    """A numpy masked array of keys: a masked key is refused, as put_many
    always did (the numpy fast path stored the value hidden under the mask)."""
    keys = np.ma.masked_array(np.arange(100, dtype=np.uint64), mask=[i == 5 for i in range(100)])
    with PayloadStore(tmp_path / "s") as s:
        with pytest.raises(TypeError):
            s.put_many(keys, [b"x"] * 100)
        assert len(s) == 0
        s.put_many(np.ma.masked_array(np.arange(100, dtype=np.uint64)), [b"y"] * 100)
        assert len(s) == 100 and s.get(99) == b"y"


class _EqualsBytes(type):
    """A metaclass that makes its classes equal to ``bytes`` (and hash alike)."""

    def __eq__(cls, other):
        return other is bytes or type.__eq__(cls, other)

    def __hash__(cls):
        return hash(bytes)


class _LyingBytes(bytes, metaclass=_EqualsBytes):
    def __len__(self):
        return 3


@pytest.mark.parametrize("n,compression", [(10, None), (100, None), (10, Compression.LZ4)])
def test_put_many_bytes_subclass_equal_to_bytes_with_a_lying_len(tmp_path, n, compression):
    """A set of the payloads' types took a bytes subclass that compares equal
    to ``bytes`` for ``bytes``: its lying ``__len__`` went into the frame
    headers, and the log was damaged beyond reopening (or the fast path
    raised midway).  Every payload is stored whole, as its bytes."""
    pytest.importorskip("lz4") if compression else None
    real = b"abcdefgh" * 20
    payloads = [b"first"] + [_LyingBytes(real)] * (n - 1)
    with PayloadStore(tmp_path / "s") as s:
        s.put_many(np.arange(n, dtype=np.uint64), payloads, compression=compression)
        assert s.get_many(list(range(n))) == [b"first"] + [real] * (n - 1)
        s.verify()
    with PayloadStore(tmp_path / "s") as s:
        assert len(s) == n and s.get(n - 1) == real
