"""Attack on sync="never" (save()/close() fsync nothing, the index's msync included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env

_CHILD = textwrap.dedent("""
    import os, sys
    from diskhash import PayloadStore
    d = sys.argv[1]
    s = PayloadStore(d, sync=sys.argv[2])
    for i in range(200):
        s.put(i, b"x" * 100)
    s.put_many(list(range(1000, 1100)), [b"y" * 10] * 100)
    os.write(2, b"=== SAVE\\n")
    s.save()
    s.put(5, b"z")
    os.write(2, b"=== CLOSE\\n")
    s.close()
    os.write(2, b"=== END\\n")
    with PayloadStore(d, readonly=True) as r:
        assert r.get(5) == b"z" and r.get(1099) == b"y" * 10 and len(r) == 300
""")


def _syncs_after_save(tmp_path, sync):
    """The msync/fsync/fdatasync calls a child makes in save() and close()."""
    trace = tmp_path / "trace.txt"
    proc = subprocess.run(
        ["strace", "-f", "-o", str(trace), "-e", "trace=msync,fsync,fdatasync,write",
         sys.executable, "-c", _CHILD, str(tmp_path / "s"), sync],
        env=subprocess_env(), timeout=120, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = trace.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if "=== SAVE" in ln)
    stop = next(i for i, ln in enumerate(lines) if "=== END" in ln)
    return [ln for ln in lines[start:stop] if "sync(" in ln]


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_sync_never_close_does_not_msync_the_index(tmp_path):
    """close() with sync="never" used to msync the whole index map (the
    index's own close flushes), although save() no longer does: the
    promise is that neither save() nor close() syncs anything."""
    assert _syncs_after_save(tmp_path, "never") == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_sync_save_close_still_msyncs_the_index(tmp_path):
    calls = _syncs_after_save(tmp_path, "save")
    assert any("msync(" in c for c in calls) and any("fdatasync(" in c or "fsync(" in c for c in calls)


def _crash(store):
    """Drop a store the way a killed process would: no save, no clean header, no trim."""
    store._gen.index.close()
    store._gen = None
    store._lock.close()
    store._lock = None


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


@pytest.mark.parametrize("window", [("_write_all", "_append_frames"),
                                    ("_append_frames", "_append_indexed"),
                                    ("_append_frames", "put_many")])
@pytest.mark.parametrize("packed", [False, True])
def test_ctrl_c_right_after_the_bulk_append(tmp_path, window, packed):
    """Ctrl-C landing between the bulk pwrite returning and the code that
    undoes it on failure: _append_frames left the frames written past the
    log's end, and the next put's shorter frame made them damage in the
    middle of the log (a writable open refused the store); _append_indexed
    (and put_many's own bulk loop) left them written and unindexed, so an
    open replayed records that put_many had raised for."""
    import numpy as np

    from diskhash import PayloadStore, _dtypes

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
                arr = np.zeros(n, dtype=_dtypes.KEY_DTYPE)
                arr["lo"] = [k & (2**64 - 1) for k in keys]
                arr["hi"] = [k >> 64 for k in keys]
                ends = np.cumsum([len(p) for p in pays]).astype(np.int64)
                s._put_many_packed([(arr, ends, np.frombuffer(b"".join(pays), dtype=np.uint8))])
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
