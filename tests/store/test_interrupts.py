"""Ctrl-C (``KeyboardInterrupt``) landing between the steps of a write:
after the bytes are written but before the index knows, in the middle of
put_many's inserts, after a delete, around the manifest rename of compact()
and rebuild_index(), after an undo.  The store keeps either the whole write
or none of it, and the next writer finds the files consistent."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env


def _crash(store):
    """Drop a store the way a killed process would: no save, no clean header, no trim."""
    store._writer.gen.index.close()
    store._writer.gen = None
    store._life.lock.close()
    store._life.lock = None

def _interrupt_after(callee, caller):
    """A trace function raising KeyboardInterrupt at the first line ``caller``
    runs after ``callee`` returned (where a real Ctrl-C can land)."""
    armed = []

    def local(frame, event, arg):
        name = frame.f_code.co_name
        if event == "return" and name == callee:
            armed.append(True)
        elif event == "line" and name == caller and armed and armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
        return local

    def glob(frame, event, arg):
        return local if frame.f_code.co_name in (callee, caller) else None
    return glob, armed


pytest.importorskip("numpy")


def _child(code: str, tmp_path, prelude: str = "", timeout: float = 120) -> str:
    """Run ``prelude`` + ``code`` in a child Python; its stdout (asserting it exited cleanly)."""
    r = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                       text=True, timeout=timeout, env=subprocess_env(), cwd=tmp_path)
    assert r.returncode == 0, f"child exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.parametrize("compression", ["NONE", "LZ4"])       # compiled frames, Python frames
def test_put_many_interrupted_after_its_write_then_a_crash(tmp_path, compression):
    """Ctrl-C landing right after put_many's pwrite (before it noted the new log
    end) left the batch's whole frames in the file unindexed; the next, shorter
    put overwrote the start of them, and after a crash the writable open found
    valid frames behind a torn one and refused the store ("damaged record in
    the middle of the log").  The interrupted write is zeroed now.

    A hostile pass over the compiled store paths found this.
    """
    d = tmp_path / "s"
    out = _child(f"""
        import os
        from diskhash import Compression, PayloadStore
        from diskhash._store import writer as _store
        s = PayloadStore({str(d)!r})
        s.put_many(list(range(100)), [b"a" * 50] * 100)
        s.save()
        real = _store.write_all
        def interrupted(fd, bufs, offset):
            real(fd, bufs, offset)       # the kernel wrote it all, then Ctrl-C
            raise KeyboardInterrupt
        _store.write_all = interrupted
        try:
            s.put_many(list(range(1000, 1100)), [b"b" * 50] * 100,
                       compression=Compression.{compression})
        except KeyboardInterrupt:
            pass
        _store.write_all = real
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
    g = store._writer.gen
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
    """A hostile pass over the compiled store paths found this."""
    from diskhash import Compression, PayloadStore

    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"old value")
        restore = _interrupt(s, "insert")
        with pytest.raises(KeyboardInterrupt):
            s.put(1, b"new value", compression=Compression.LZ4)    # (the Python put path)
        restore()
        _check_after(s, {1: b"new value"})


def test_ctrl_c_after_compiled_put_keeps_the_record(tmp_path, monkeypatch):
    """A hostile pass over the compiled store paths found this."""
    from diskhash import PayloadStore
    from diskhash._store import writer as _store

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
    """The compiled put_many: its one ``insert_many`` per piece had run.

    A hostile pass over the compiled store paths found this.
    """
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
    the third, the three stay and the rest are gone, as a crash would leave it.

    A hostile pass over the compiled store paths found this.
    """
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
    """A hostile pass over the compiled store paths found this."""
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
    the store switches to what the MANIFEST names.

    A hostile pass over the compiled store paths found this.
    """
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
    rename leaves the old generation in use and on disk.

    A hostile pass over the compiled store paths found this.
    """
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
    rebuild_index() then refuse the store).

    A hostile pass over the compiled store paths found this.
    """
    from diskhash import PayloadStore
    from diskhash._store import writer as _store

    class Failing:
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            if name == "insert_many":
                def fail(*args):
                    raise OSError(5, "simulated I/O error")
                return fail
            return getattr(self._real, name)

    real_write = _store.write_all
    calls = []

    def write_then_interrupt(fd, bufs, offset):
        out = real_write(fd, bufs, offset)
        calls.append(offset)
        if len(calls) == 2:             # the first writes the frames, the second the zeros
            raise KeyboardInterrupt
        return out

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(100)), [b"old"] * 100)
        g = s._writer.gen
        real_index = g.index
        g.index = Failing(real_index)
        monkeypatch.setattr(_store, "write_all", write_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            s.put_many(list(range(100, 200)), [b"new"] * 100)
        monkeypatch.setattr(_store, "write_all", real_write)
        g.index = real_index
        s.put(7, b"after")
        s.verify()
        assert s.rebuild_index() == 100
        assert s.get(7) == b"after" and s.get(150) is None and s.get(50) == b"old"


@pytest.mark.parametrize("window", [("write_all", "append_frames"),
                                    ("append_frames", "_append_indexed"),
                                    ("append_frames", "put_many")])
@pytest.mark.parametrize("packed", [False, True])
def test_ctrl_c_right_after_the_bulk_append(tmp_path, window, packed):
    """Ctrl-C landing between the bulk pwrite returning and the code that
    undoes it on failure: _append_frames left the frames written past the
    log's end, and the next put's shorter frame made them damage in the
    middle of the log (a writable open refused the store); _append_indexed
    (and put_many's own bulk loop) left them written and unindexed, so an
    open replayed records that put_many had raised for.

    A hostile pass over sync="never" found this.
    """
    import numpy as np

    from diskhash import KEY_DTYPE, PayloadStore
    from diskhash._store.store import put_many_packed

    if packed and window[1] == "put_many":
        pytest.skip("the packed path has no loop of its own")
    d = tmp_path / "s"
    s = PayloadStore(d, sync="never")
    for i in range(20):
        s.put(i, b"b%d" % i)
    n = 80 if window[1] != "put_many" else 10        # < 64 records: put_many's own loop
    keys = [100 + i + ((i % 2) << 64) for i in range(n)]
    pays = [bytes([i]) * (i % 3 * 30) for i in range(n)]
    trace, armed = _interrupt_after(*window)
    sys.settrace(trace)
    try:
        with pytest.raises(KeyboardInterrupt):
            if packed:
                arr = np.zeros(n, dtype=KEY_DTYPE)
                arr["lo"] = [k & (2**64 - 1) for k in keys]
                arr["hi"] = [k >> 64 for k in keys]
                ends = np.cumsum([len(p) for p in pays]).astype(np.int64)
                put_many_packed(s, [(arr, ends, np.frombuffer(b"".join(pays), dtype=np.uint8))])
            else:
                s.put_many(keys, pays)
    finally:
        sys.settrace(None)
    assert armed == [False]                              # the interrupt was raised where meant
    assert all(s.get(k) is None for k in keys)
    s.put(9999, b"after")
    _crash(s)
    with PayloadStore(d) as r:                           # used to raise CorruptPayloadError
        r.verify()
        assert [r.get(i) for i in range(20)] == [b"b%d" % i for i in range(20)]
        assert r.get(9999) == b"after"
        assert [k for k in keys if r.get(k) is not None] == []     # used to be replayed
        assert len(r) == 21


_EVERY_POINT = """
import os, shutil, sys, threading, tempfile
import diskhash
from diskhash import Compression, PayloadStore

OPS = {
    "put": lambda s: s.put(1, b"x" * 100),
    "put_lz4": lambda s: s.put(1, b"x" * 100, compression=Compression.LZ4),
    "delete": lambda s: s.delete(2),
    "pop": lambda s: s.pop(3, None),
    "put_many": lambda s: s.put_many([4, 5], [b"a", b"b"]),
    "save": lambda s: s.save(),
    "rebuild": lambda s: s.rebuild_index(),
}
op = OPS[%(op)r]
main = threading.main_thread()

PACKAGE = os.path.dirname(diskhash.__file__) + os.sep
EVERY = %(every)r
ROOT = tempfile.mkdtemp(dir=%(where)r)     # removed at the end (tmpfs is shared)

def fresh():
    s = PayloadStore(tempfile.mkdtemp(dir=ROOT), sync=%(sync)s)
    s.put_many(list(range(10)), [b"v%%d" %% i for i in range(10)])
    return s

def run(s, at):
    seen = [0]
    def trace(frame, event, arg):
        # Where a signal's Ctrl-C lands: a Python function's first instruction
        # ("call"), the caller's step after a call returned ("return": raised
        # in the callee, it reaches the caller there).  Not "line" events: some
        # (a ``try:``, a ``with`` line's exit) are steps no signal lands on,
        # where CPython 3.11+ lets a trace function's exception skip a ``with``.
        # Without EVERY, only the package's own frames (the code that takes
        # and lets go of the locks) and the first frame of each call they
        # make (a contextlib ``__exit__`` of a ``with`` in the package, say):
        # a step deeper in the standard library raises out of that call as
        # at one of its own steps.
        if (threading.current_thread() is main and event in ("call", "return")
                and (EVERY or frame.f_code.co_filename.startswith(PACKAGE)
                     or (frame.f_back is not None and frame.f_back.f_code.co_filename.startswith(PACKAGE)))):
            seen[0] += 1
            if seen[0] == at:
                raise KeyboardInterrupt
        return trace
    sys.settrace(trace)
    try:
        op(s)
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    return seen[0]

def check_every_step(total):
    held = []
    for at in range(1, total + 1):
        s = fresh()
        run(s, at)
        # another thread must get the writer and the maintenance lock now
        t = threading.Thread(target=lambda: (s.save(), s.rebuild_index()), daemon=True)
        t.start()
        t.join(10)
        if t.is_alive():
            held.append(at)
            continue
        try:
            s.compact()
            s.close()
        except RuntimeError:
            held.append(at)
    return held

try:
    total = run(fresh(), 0)
    held = check_every_step(total)
finally:
    shutil.rmtree(ROOT, ignore_errors=True)
print(total, held)
"""


_WRITES = ["put", "put_lz4", "delete", "pop", "put_many", "save", "rebuild"]


def _every_point(tmp_path, op: str, every: bool, where: str) -> None:
    # (600 s: its fsyncs are slow when the disk is busy)
    out = _child(_EVERY_POINT % {"sync": 60_000, "op": op, "every": every, "where": where},
                 tmp_path, timeout=600)
    total, held = out.split(" ", 1)
    assert int(total) > 3
    assert held.strip() == "[]", f"locks left held after Ctrl-C at steps {held.strip()} of {total}"


def _memory_dir() -> str:
    """A tmpfs directory, where the rounds' fsyncs cost nothing; else the test's own."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else "."


@pytest.mark.parametrize("op", _WRITES)
def test_ctrl_c_at_any_point_of_a_write_lets_its_locks_go(tmp_path, op):
    """A KeyboardInterrupt raised at every Python-level call and return of a
    write in turn (a trace function: where a signal handler's Ctrl-C lands) leaves
    no lock held: another thread then saves and rebuilds, and compact() and
    close() run.  Found by the layout rewrite's attack: the writer's door,
    written in Python, lost its lock to a Ctrl-C at the first instruction of
    its ``__exit__`` (or right after ``acquire()`` returned), and the
    maintenance lock to one inside its own ``__exit__``; the sync thread,
    other writers and close() then waited for ever (close() joins the sync
    thread) or compact() in the same thread raised RuntimeError.

    The default run takes the steps of the package's own frames and of the
    first frame of each call they make (every door, lock and ``__exit__``
    among them), with the stores on tmpfs: a rebuild has some hundreds of
    steps, each a fresh store and a save, rebuild and compact.  (A Python
    step between a rebuild's taking of the maintenance lock and its ``try``
    fails it.)  The slow twin below takes every step, the standard
    library's too, on the test's own disk."""
    _every_point(tmp_path, op, every=False, where=_memory_dir())


@pytest.mark.slow
@pytest.mark.parametrize("op", _WRITES)
def test_ctrl_c_at_every_step_of_a_write_on_disk_lets_its_locks_go(tmp_path, op):
    """The test above at every step, the standard library's frames too, with the
    stores on the test's own disk (the fsyncs real)."""
    _every_point(tmp_path, op, every=True, where=".")


def test_ctrl_c_in_the_writer_door_does_not_hang_close_with_a_sync_thread(tmp_path):
    """The hang itself: Ctrl-C at the first instruction of the door's exit left
    the writer lock held; the sync thread (``sync=5``) blocked on it and
    ``close()``, which joins that thread, never returned."""
    code = """
        import sys, threading, time
        from diskhash import PayloadStore
        s = PayloadStore("s", sync=5)
        s.put(1, b"a")
        fired = []
        def trace(frame, event, arg):
            if (event == "call" and frame.f_code.co_name == "__exit__" and not fired
                    and frame.f_code.co_filename.endswith(("writer.py", "write.pyx"))):
                fired.append(1)
                raise KeyboardInterrupt
        sys.settrace(trace)
        try:
            s.delete(1)
        except KeyboardInterrupt:
            pass
        sys.settrace(None)
        time.sleep(0.1)         # the sync thread wakes up and wants the lock
        s.close()
        print("closed", 1 in PayloadStore("s"))
    """
    assert _child(code, tmp_path, timeout=60).split() == ["closed", "False"]
