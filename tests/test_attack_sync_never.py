"""Attack on sync="never" (save()/close() fsync nothing, the index's msync included)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
from conftest import subprocess_env

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
