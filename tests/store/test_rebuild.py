"""rebuild_index(): the index from the data file alone, identical to the one lost."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env

from diskhash import Compression, CorruptIndexError, PayloadStore


def _child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())



def _populate(s):
    for i in range(3000):
        s.put(i, b"v1 %d " % i * (i % 50), compression=Compression(i % 3))
    for i in range(0, 3000, 7):
        s.put(i, b"v2 %d" % i)                   # overwrites
    for i in range(0, 3000, 11):
        s.delete(i)                              # tombstones
    s.put(11, b"back after a delete")
    s.put_many(range(5000, 5500), [b"many %d" % i for i in range(5000, 5500)])


def _records(s):
    return {k: tuple(s.meta(k)) for k in s}


def test_rebuild_gives_the_same_records(tmp_path):
    seen = []
    with PayloadStore(tmp_path / "s") as s:
        _populate(s)
        before = _records(s)
        n = s.rebuild_index(progress=lambda done, total: seen.append((done, total)))
        assert n == len(before) == len(s)
        assert _records(s) == before
        s.verify()
    assert seen and seen[-1][0] == seen[-1][1]
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))


def test_index_file_deleted_is_rebuilt_on_open(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        _populate(s)
        before = _records(s)
        index_path = s.index.path
    os.unlink(index_path)
    with PayloadStore(d) as s:
        assert s.recovery is not None and s.recovery.rebuilt == "index file missing"
        assert s.recovery.cut_bytes == 0 and s.recovery.cut_frames == 0
        assert _records(s) == before
        assert s.get(11) == b"back after a delete" and 22 not in s
        s.verify()


def test_damaged_index_is_rebuilt_on_writable_open_only(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        _populate(s)
        before = _records(s)
        index_path = s.index.path
    with open(index_path, "r+b") as f:
        f.write(b"NOTANIDX")
    with pytest.raises(CorruptIndexError):
        PayloadStore(d, readonly=True)
    with PayloadStore(d) as s:
        assert s.recovery is not None and "index damaged" in (s.recovery.rebuilt or "")
        assert _records(s) == before
    with PayloadStore(d, readonly=True) as r:
        assert _records(r) == before


def test_readers_keep_answering_during_rebuild(tmp_path):
    import threading
    with PayloadStore(tmp_path / "s") as s:
        _populate(s)
        before = {k: s.get(k) for k in s}
        stop = threading.Event()
        errors = []

        def reader():
            keys = list(before)
            i = 0
            while not stop.is_set():
                k = keys[i % len(keys)]
                i += 1
                try:
                    if s.get(k) != before[k]:
                        errors.append(k)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for _ in range(3):
            s.rebuild_index()
        stop.set()
        for t in threads:
            t.join()
        assert not errors


def test_compiled_and_python_replay_agree(tmp_path, monkeypatch):
    from diskhash._format import payload as fmt
    with PayloadStore(tmp_path / "s") as s:
        _populate(s)
        s.put((1 << 127) + 5, b"a wide key")
        s.put(1 << 64, b"hi only", compression=Compression.ZSTD)
        s.delete(1 << 64)
        fd, end, path = s._writer.gen.fd, s._writer.end, s.data_path
        compiled = fmt.replay(fd, fmt.DATA_HEADER_SIZE, end, path)
        monkeypatch.setattr(fmt, "_scan_into", None)
        python = fmt.replay(fd, fmt.DATA_HEADER_SIZE, end, path)
        assert compiled == python
        final, result = compiled
        assert result.end == end and not result.torn
        assert final[1 << 64] is None and final[(1 << 127) + 5][1] == len(b"a wide key")
        assert {k for k, v in final.items() if v is not None} == set(s)


def _write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io")
def test_save_after_a_rebuild_writes_pages_not_folios(tmp_path):
    """After rebuild_index, a save() of 100 random puts dirties about a page
    per changed slot.  (A rebuild whose table came into the page cache in
    large folios -- its zeros written with pwrite -- made that 17 MB instead
    of 3.6 MB; write_bytes counts each dirtied folio whole.)"""
    rng = random.Random(21)
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put_many([rng.getrandbits(64) for _ in range(200_000)], [b"p" * 100] * 200_000)
    with PayloadStore(d) as s:
        s.rebuild_index()
        s.save()
        before = _write_bytes()
        for _ in range(100):
            s.put(rng.getrandbits(128), b"x" * 100)
        s.save()
        written = _write_bytes() - before
    assert written < 8 << 20, f"save() after 100 puts dirtied {written} bytes"


@pytest.mark.parametrize("call", ["close", "compact", "rebuild_index"])
def test_progress_callback_reentering_maintenance_raises_not_deadlocks(tmp_path, call):
    # rebuild_index() holds the (non-reentrant) maintenance lock while it calls
    # progress(); a callback calling close()/compact() hung forever.
    """A hostile pass over PayloadStore and ShardedStore found this."""
    proc = _child(f"""
        from diskhash import PayloadStore
        s = PayloadStore({str(tmp_path / "s")!r})
        for i in range(50):
            s.put(i, b"p%d" % i)
        try:
            s.rebuild_index(progress=lambda done, total: s.{call}())
        except RuntimeError as exc:
            print("RuntimeError")
        assert not s.closed
        assert len(s) == 50 and s.get(7) == b"p7"
        s.put(100, b"after")
        s.close()
        with PayloadStore({str(tmp_path / "s")!r}, readonly=True) as r:
            assert len(r) == 51 and r.get(100) == b"after" and r.get(49) == b"p49"
        print("ok")
    """, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["RuntimeError", "ok"], proc.stdout


def test_writes_from_a_rebuild_progress_callback_are_kept(tmp_path):
    """``rebuild_index(progress)`` holds the (reentrant) writer lock while it
    folds the log up to where it ended at the start: a put or delete made by
    the callback reached the old index only, and the switch to the new one
    lost it (the put returned, then the key was absent, also after reopening).

    A hostile pass over the compiled store paths found this.
    """
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
