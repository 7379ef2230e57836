"""``sync=``: what save() and close() make durable.  ``sync="never"`` fsyncs
nothing (the index's msync included), ``"save"`` syncs at every save, an
interval saves in the background."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading

import pytest
from helpers.processes import subprocess_env

from diskhash import (
    PayloadStore,
)


class _SaveSpy:
    """An index stand-in that counts save() calls (the rest goes to the index)."""

    def __init__(self, index):
        self._index = index
        self.saves = 0

    def __getattr__(self, name):
        return getattr(self._index, name)

    def __contains__(self, key):
        return key in self._index

    def __len__(self):
        return len(self._index)

    def save(self):
        self.saves += 1
        self._index.save()


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
    promise is that neither save() nor close() syncs anything.

    A hostile pass over sync="never" found this.
    """
    assert _syncs_after_save(tmp_path, "never") == []


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_sync_save_close_still_msyncs_the_index(tmp_path):
    """A hostile pass over sync="never" found this."""
    calls = _syncs_after_save(tmp_path, "save")
    assert any("msync(" in c for c in calls) and any("fdatasync(" in c or "fsync(" in c for c in calls)


def test_sync_interval_saves_in_the_background(tmp_path):
    """A hostile pass over PayloadStore found this."""
    with PayloadStore(tmp_path / "s", sync=20) as s:
        s.put(1, b"x")
        for _ in range(200):
            if s.stats().checkpoint == s._writer.end:
                break
            threading.Event().wait(0.01)
        assert s.stats().checkpoint == s._writer.end


@pytest.mark.parametrize("sync, saves", [("save", 1), ("never", 0)])
def test_sync_never_does_not_sync_the_index(tmp_path, sync, saves):
    """sync="never": save() records the checkpoint and fsyncs nothing -- the
    index's msync (an fsync of its map) included -- and a reopen still finds
    every put (the index's writes are in the page cache).

    A hostile pass over PayloadStore found this.
    """
    d = tmp_path / "s"
    with PayloadStore(d, sync=sync) as s:
        s.put(2, b"two")                # the data file allocated and mapped first
        real = s._writer.gen.index
        spy = s._writer.gen.index = _SaveSpy(real)
        try:
            s.put(1, b"one")
            s.save()
        finally:
            s._writer.gen.index = real
        assert spy.saves == saves
        assert s.stats().checkpoint == s._writer.end
    with PayloadStore(d, readonly=True) as s:
        assert s.get(1) == b"one"
