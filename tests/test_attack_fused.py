"""Hostile pass over the compiled store paths (``_store_read``, ``_store_write``).

Each test here is a crash, hang or wrong answer found by attacking the fused
read, the frame encoder and the whole-log passes directly: Python code run in
the middle of a compiled loop (a key's ``__index__``, an int subclass's
operators, a foreign "index" callable) must never leave a C pointer into a
buffer that code freed or released.  Crash regressions run in a child process
with a timeout, so a regression fails the test instead of killing the suite.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env

pytest.importorskip("numpy")


def _child(code: str, tmp_path, prelude: str = "", timeout: float = 120) -> str:
    """Run ``prelude`` + ``code`` in a child Python; its stdout (asserting it exited cleanly)."""
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, f"child exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


_FRAME = """
import struct
from diskhash import _store_read as sr

def frame(key, payload):
    body = struct.pack("<BBHIIQQ", 1, 0, 0xD5A7, len(payload), len(payload),
                       key & (2**64 - 1), key >> 64) + payload
    return struct.pack("<I", sr.checksum(body)) + body
"""


def test_encode_frames_key_that_resizes_the_blob(tmp_path):
    """A key whose ``__index__`` shrinks the output bytearray mid-loop: an
    error, never a copy into the freed buffer (it crashed the interpreter)."""
    out = _child("""
        import pytest
        from diskhash._store_write import encode_frames
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
    buffer request runs mid-loop."""
    out = _child("""
        import pytest
        from diskhash._store_write import encode_frames
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


def test_map_reader_read_edge_id_that_releases_the_map(tmp_path):
    """``MapReader.read`` with an int-subclass edge id whose ``>>`` releases the
    reader and closes the map: no checksum read through the released pointer."""
    out = _child("""
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
    """, tmp_path, _FRAME)
    assert out.strip() == "ok"


def test_copy_live_get_returning_a_non_tuple(tmp_path):
    """``copy_live``'s ``get`` (the index's) returning something other than a
    PayloadMeta: ``TypeError``, not a read of a list as a tuple's items."""
    out = _child("""
        import pytest
        data = frame(7, b"p" * 100)
        for ret in ([1, 96], 5, (1,), (), "ab"):
            with pytest.raises(TypeError):
                sr.copy_live(data, 0, 64, lambda k: ret, [], {}, 64)
        out, live = [], {}
        assert sr.copy_live(data, 0, 64, lambda k: (7, 96, 100, 0, 100), out, live, 64) == (132, 196)
        assert out == [data] and live == {7: (96, 100, 0, 100)}
        print("ok")
    """, tmp_path, _FRAME)
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
    not ``struct.error`` (a negative offset) or ``OverflowError`` (pread)."""
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


def test_sigkill_during_the_compiled_write_paths(tmp_path):
    """The SIGKILL model (tests/store_crash_model.py) in ``plain`` mode: puts and
    put_manys of uncompressed payloads, which take the compiled paths
    (``put_frame``, ``encode_frames``) the LZ4-default modes never reach."""
    from helpers.store_crash_model import run
    stats = run(tmp_path / "store", kills=8, seed=5, env=subprocess_env(), max_delay=0.6,
                modes=("plain",))
    assert stats.rounds == 8


@pytest.mark.slow
def test_sigkill_during_the_compiled_write_paths_hundreds(tmp_path):
    from helpers.store_crash_model import run
    stats = run(tmp_path / "store", kills=100, seed=23, env=subprocess_env(), max_delay=0.7,
                modes=("plain",))
    print(stats)
    assert stats.rounds == 100 and stats.killed_mid_put_many > 0


def test_put_key_whose_index_puts_to_the_same_store(tmp_path):
    """The compiled put converted the key under the (reentrant) writer lock,
    after reading where the log ends: a key whose ``__index__`` put another
    record wrote that record at the same offset, which the outer put then
    overwrote (the nested key's index entry pointed at the outer frame)."""
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


def test_writes_from_a_rebuild_progress_callback_are_kept(tmp_path):
    """``rebuild_index(progress)`` holds the (reentrant) writer lock while it
    folds the log up to where it ended at the start: a put or delete made by
    the callback reached the old index only, and the switch to the new one
    lost it (the put returned, then the key was absent, also after reopening)."""
    from diskhash import PayloadStore

    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put_many(list(range(1000)), [b"x" * 100] * 1000)
        calls = []

        def progress(done, total):
            if not calls:
                s.put(5000, b"put from progress")
                s.put_many(list(range(6000, 6100)), [b"y"] * 100)
                s.delete(3)
            calls.append(done)

        assert s.rebuild_index(progress) == 1000 + 1 + 100 - 1
        assert calls
        assert s.get(5000) == b"put from progress" and s.get(6050) == b"y" and s.get(3) is None
        s.verify()
    with PayloadStore(d) as s:
        assert s.get(5000) == b"put from progress" and s.get(6050) == b"y" and s.get(3) is None
        assert len(s) == 1100


# -- the store against a dict, over random operations -------------------------------

_SIZES = (0, 1, 7, 100, 4095, 4096, 4097, 16 * 1024, 65535, 65536, 65537)   # BIG_READ is 64 KiB


def _model_run(directory, seed: int, steps: int) -> None:
    """Random puts (compiled and Python paths), put_manys (compiled at 64+ records),
    deletes, gets and get_manys (list, uint64 array, KEY_DTYPE, strided array),
    compact, rebuild_index, reopen (writable and read-only), each read compared
    with a dict; payloads at the BIG_READ boundary, 4 KiB, empty, compressible
    or not."""
    import random

    import numpy as np

    from diskhash import KEY_DTYPE, Compression, PayloadStore

    rng = random.Random(seed)
    comp = rng.choice([Compression.NONE, Compression.LZ4, Compression.ZSTD])
    keyspace = [rng.getrandbits(128) if i % 3 == 0 else rng.randrange(1000) for i in range(200)]
    model: dict[int, bytes] = {}

    def payload() -> bytes:
        n = rng.choice(_SIZES)
        return rng.randbytes(n) if rng.random() < 0.5 else bytes([rng.randrange(4)]) * n

    def check(store, keys) -> None:
        want = [model.get(k) for k in keys]
        assert store.get_many(keys) == want
        arr = np.empty(len(keys), dtype=KEY_DTYPE)
        arr["lo"] = [k & (2**64 - 1) for k in keys]
        arr["hi"] = [k >> 64 for k in keys]
        assert store.get_many(arr) == want
        assert store.get_many(np.repeat(arr, 2)[::2]) == want
        small = [k for k in keys if k < 2**64]
        assert store.get_many(np.array(small, dtype=np.uint64)) == [model.get(k) for k in small]
        assert [store.get(k) for k in keys] == want

    s = PayloadStore(directory, compression=comp)
    try:
        for _step in range(steps):
            op = rng.random()
            if op < 0.35:
                k, v = rng.choice(keyspace), payload()
                c = rng.choice([None, None, Compression.NONE, Compression.LZ4, Compression.ZSTD])
                s.put(k, v if rng.random() < 0.7 else bytearray(v), compression=c)
                model[k] = v
            elif op < 0.45:
                n = rng.choice([1, 63, 64, 65, 200])
                ks = [rng.choice(keyspace) for _ in range(n)]
                vs = [payload() for _ in range(n)]
                s.put_many(ks, vs, compression=rng.choice([None, Compression.NONE, Compression.LZ4]))
                model.update(zip(ks, vs))
            elif op < 0.55:
                k = rng.choice(keyspace)
                assert s.delete(k) == (k in model)
                model.pop(k, None)
            elif op < 0.75:
                check(s, [rng.choice(keyspace) for _ in range(rng.choice([1, 17, 100]))])
            elif op < 0.80:
                s.compact()
            elif op < 0.84:
                s.rebuild_index()
            elif op < 0.90:
                s.close()
                s = PayloadStore(directory, compression=comp)
            elif op < 0.93:
                s.close()
                with PayloadStore(directory, readonly=True) as ro:
                    check(ro, keyspace)
                s = PayloadStore(directory, compression=comp)
            else:
                s.save()
        check(s, keyspace)
        assert len(s) == len(model)
        s.verify()
    finally:
        s.close()


@pytest.mark.parametrize("seed", range(3))
def test_store_matches_a_dict(tmp_path, seed):
    _model_run(tmp_path / "s", seed, 120)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3, 40))
def test_store_matches_a_dict_long(tmp_path, seed):
    _model_run(tmp_path / "s", seed, 500)


@pytest.mark.parametrize("compression", ["NONE", "LZ4"])       # compiled frames, Python frames
def test_put_many_interrupted_after_its_write_then_a_crash(tmp_path, compression):
    """Ctrl-C landing right after put_many's pwrite (before it noted the new log
    end) left the batch's whole frames in the file unindexed; the next, shorter
    put overwrote the start of them, and after a crash the writable open found
    valid frames behind a torn one and refused the store ("damaged record in
    the middle of the log").  The interrupted write is zeroed now."""
    d = tmp_path / "s"
    out = _child(f"""
        import os
        from diskhash import Compression, PayloadStore, _store
        s = PayloadStore({str(d)!r})
        s.put_many(list(range(100)), [b"a" * 50] * 100)
        s.save()
        real = _store._write_all
        def interrupted(fd, bufs, offset):
            real(fd, bufs, offset)       # the kernel wrote it all, then Ctrl-C
            raise KeyboardInterrupt
        _store._write_all = interrupted
        try:
            s.put_many(list(range(1000, 1100)), [b"b" * 50] * 100,
                       compression=Compression.{compression})
        except KeyboardInterrupt:
            pass
        _store._write_all = real
        s.put(7, b"small")               # where the interrupted batch began
        assert s.get(1050) is None and s.get(7) == b"small"
        print("ok", flush=True)
        os._exit(0)                      # a crash: no close()
    """, tmp_path)
    assert out.strip() == "ok"
    from diskhash import PayloadStore

    with PayloadStore(d) as s:
        assert s.get(7) == b"small" and s.get(1050) is None and len(s) == 100
        s.verify()


# -- Ctrl-C landing as an index call returns ----------------------------------------

class _InterruptedAfter:
    """The generation's index, but ``method`` raises KeyboardInterrupt after the
    real call did its work (``after`` calls in) -- what Ctrl-C does when it lands
    at the bytecode after the call (seen on 3.10 with real signals)."""

    def __init__(self, real, method: str, after: int = 1) -> None:
        self._real, self._method, self._left = real, method, after

    def __getattr__(self, name: str):
        attr = getattr(self._real, name)
        if name != self._method:
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self._left -= 1
            if self._left == 0:
                raise KeyboardInterrupt
            return out
        return call

    def __contains__(self, key) -> bool:
        return key in self._real


def _interrupt(store, method: str, after: int = 1):
    g = store._gen
    real = g.index
    g.index = _InterruptedAfter(real, method, after)
    return lambda: setattr(g, "index", real)


def _check_after(store, want: "dict[int, bytes | None]") -> None:
    assert {k: store.get(k) for k in want} == want
    store.verify()
    store.put(999_999, b"z" * 3)            # the next append must not land on kept frames
    assert {k: store.get(k) for k in want} == want
    store.rebuild_index()                   # and the log agrees with the index
    assert {k: store.get(k) for k in want} == want
    store.verify()


def test_ctrl_c_after_put_indexed_keeps_the_record(tmp_path):
    from diskhash import Compression, PayloadStore

    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"old value")
        restore = _interrupt(s, "insert")
        with pytest.raises(KeyboardInterrupt):
            s.put(1, b"new value", compression=Compression.LZ4)    # (the Python put path)
        restore()
        _check_after(s, {1: b"new value"})


def test_ctrl_c_after_compiled_put_keeps_the_record(tmp_path, monkeypatch):
    from diskhash import PayloadStore, _store

    real = _store._put_frame

    def interrupted(*args):
        real(*args)
        raise KeyboardInterrupt
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"old value")
        monkeypatch.setattr(_store, "_put_frame", interrupted)
        with pytest.raises(KeyboardInterrupt):
            s.put(1, b"new value")
        monkeypatch.setattr(_store, "_put_frame", real)
        _check_after(s, {1: b"new value"})


def test_ctrl_c_after_put_many_indexed_keeps_the_batch(tmp_path):
    """The compiled put_many: its one ``insert_many`` per piece had run."""
    from diskhash import PayloadStore

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(100)), [b"old"] * 100)
        restore = _interrupt(s, "insert_many")
        with pytest.raises(KeyboardInterrupt):
            s.put_many(list(range(100)), [b"new %d" % k for k in range(100)])
        restore()
        _check_after(s, {k: b"new %d" % k for k in range(100)})


def test_ctrl_c_in_the_middle_of_put_many_inserts_keeps_the_prefix(tmp_path):
    """The Python put_many of a few records inserts them one by one: stopped after
    the third, the three stay and the rest are gone, as a crash would leave it."""
    from diskhash import Compression, PayloadStore

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(10)), [b"old"] * 10)
        restore = _interrupt(s, "insert", after=3)
        keys = [5, 6, 5, 7, 8]                  # a repeated key, indexed twice
        with pytest.raises(KeyboardInterrupt):
            s.put_many(keys, [b"new %d" % i for i in range(5)], compression=Compression.LZ4)
        restore()
        want = {k: b"old" for k in range(10)}
        want.update({5: b"new 2", 6: b"new 1"})
        _check_after(s, want)


def test_ctrl_c_after_delete_keeps_the_tombstone(tmp_path):
    from diskhash import PayloadStore

    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"one")
        s.put(2, b"two")
        restore = _interrupt(s, "delete")
        with pytest.raises(KeyboardInterrupt):
            s.delete(1)
        restore()
        _check_after(s, {1: None, 2: b"two"})      # rebuild_index does not bring it back


@pytest.mark.parametrize("op", ["compact", "rebuild_index"])
def test_ctrl_c_after_the_manifest_rename_switches(tmp_path, monkeypatch, op):
    """Ctrl-C landing after the MANIFEST rename (during the directory fsync that
    follows it): compact() deleted its new files and went on with the old
    generation, whose files the next open removed as leftovers -- every record
    lost; rebuild_index() went on with the old index, and the next open used
    the new one without the writes made meanwhile.  The rename is the commit:
    the store switches to what the MANIFEST names."""
    from diskhash import PayloadStore

    d = tmp_path / "s"
    s = PayloadStore(d)
    s.put_many(list(range(100)), [b"v%d" % k for k in range(100)])
    for k in range(0, 100, 2):
        s.delete(k)
    s.save()
    real = PayloadStore._write_manifest

    def interrupted(self, *args):
        real(self, *args)
        raise KeyboardInterrupt
    monkeypatch.setattr(PayloadStore, "_write_manifest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        getattr(s, op)()
    monkeypatch.setattr(PayloadStore, "_write_manifest", real)
    s.put(1000, b"after")
    assert s.get(1) == b"v1" and s.get(1000) == b"after"
    s.close()
    with PayloadStore(d) as s:
        assert s.get(1) == b"v1" and s.get(1000) == b"after" and s.get(2) is None
        assert len(s) == 51
        s.verify()


@pytest.mark.parametrize("op", ["compact", "rebuild_index"])
def test_failure_before_the_manifest_rename_keeps_the_old_generation(tmp_path, monkeypatch, op):
    """The other side of the commit point: a MANIFEST write that fails before its
    rename leaves the old generation in use and on disk."""
    import errno

    from diskhash import PayloadStore

    d = tmp_path / "s"
    s = PayloadStore(d)
    s.put_many(list(range(100)), [b"v%d" % k for k in range(100)])

    def full(self, *args):
        raise OSError(errno.ENOSPC, "no space")
    monkeypatch.setattr(PayloadStore, "_write_manifest", full)
    before = s.stats()
    with pytest.raises(OSError):
        getattr(s, op)()
    monkeypatch.undo()
    assert (s.stats().data_generation, s.stats().index_generation) == \
        (before.data_generation, before.index_generation)
    s.put(1000, b"after")
    s.close()
    with PayloadStore(d) as s:
        assert s.get(1) == b"v1" and s.get(1000) == b"after" and len(s) == 101
        s.verify()


def test_ctrl_c_after_the_undo_zeroes_moves_the_end_back(tmp_path, monkeypatch):
    """An insert_many that fails (nothing indexed) has its frames zeroed; Ctrl-C
    landing right after that zero write left the log's end past the zeros, so
    the next append made a hole in the middle of the log (verify() and
    rebuild_index() then refuse the store)."""
    from diskhash import PayloadStore, _store

    class Failing:
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            if name == "insert_many":
                def fail(*args):
                    raise OSError(5, "simulated I/O error")
                return fail
            return getattr(self._real, name)

    real_write = _store._write_all
    calls = []

    def write_then_interrupt(fd, bufs, offset):
        out = real_write(fd, bufs, offset)
        calls.append(offset)
        if len(calls) == 2:             # the first writes the frames, the second the zeros
            raise KeyboardInterrupt
        return out

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(100)), [b"old"] * 100)
        g = s._gen
        real_index = g.index
        g.index = Failing(real_index)
        monkeypatch.setattr(_store, "_write_all", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            s.put_many(list(range(100, 200)), [b"new"] * 100)
        monkeypatch.setattr(_store, "_write_all", real_write)
        g.index = real_index
        s.put(7, b"after")
        s.verify()
        assert s.rebuild_index() == 100
        assert s.get(7) == b"after" and s.get(150) is None and s.get(50) == b"old"
