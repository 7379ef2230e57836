"""export_parquet reads the log in order: the order of the rows, the memory
it holds, and the index-order walk it falls back on."""

from __future__ import annotations

import glob
import os
import random

import pytest

from diskhash import CorruptPayloadError, PayloadStore, export_parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def exported(path):
    table = pq.read_table(path)
    return [(int.from_bytes(k, "little"), v) for k, v in
            zip(table.column("key").to_pylist(), table.column("payload").to_pylist())]


def data_file(directory):
    (path,) = glob.glob(os.path.join(directory, "data-*.dat"))
    return path


def mapped_kib(path):
    """Rss of this process's maps of ``path``, KiB (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if "-" in line.split(" ", 1)[0]:        # a mapping's first line
                inside = line.rstrip().endswith(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def test_rows_come_in_the_order_they_were_written(tmp_path):
    rng = random.Random(7)
    keys = [rng.getrandbits(100) | 1 for _ in range(400)]
    written = {}
    with PayloadStore(tmp_path / "s") as store:
        for k in keys:
            store.put(k, b"first %d" % k)
            written[k] = b"first %d" % k
        for k in keys[::7]:             # overwritten: the row moves to its new place
            store.put(k, b"again %d" % k)
            written.pop(k)
            written[k] = b"again %d" % k
        for k in keys[3::11]:           # deleted: no row
            store.delete(k)
            written.pop(k, None)
        assert export_parquet(store, tmp_path / "o.parquet", batch_rows=64) == len(written)
    assert exported(tmp_path / "o.parquet") == list(written.items())


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_the_export_lets_go_of_the_pages_behind_it(tmp_path):
    # A store bigger than memory streams out: the data file's pages leave the
    # process's resident set once their batch is read (the export of a 1 GB
    # store held all of it before).
    n, size, batch = 8000, 4096, 256 << 10
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(1, n + 1)), [os.urandom(size) for _ in range(n)])
    path = data_file(tmp_path / "s")
    assert os.path.getsize(path) >= n * size

    peaks = []
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        assert store.get(1) is not None                 # the map exists
        export_parquet(store, tmp_path / "o.parquet", batch_bytes=batch,
                       progress=lambda done, total: peaks.append(mapped_kib(path)))
        after = mapped_kib(path)
    assert len(peaks) > 20
    # (the page cache may hold the file in folios of up to 2 MiB, mapped whole)
    bound = (4 * batch + (4 << 20)) // 1024
    assert max(peaks) <= bound < n * size // 1024 // 4, peaks
    assert after <= bound
    assert sorted(k for k, _ in exported(tmp_path / "o.parquet")) == list(range(1, n + 1))


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux's /proc/self/smaps")
def test_the_export_lets_go_of_the_index_pages_it_probed(tmp_path):
    # Every key is probed: the whole index stayed mapped after the export
    # (640 MiB for a store of 10M entries).
    n = 100_000
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(1, n + 1)), [b"%8d" % i for i in range(n)])
    (index,) = glob.glob(os.path.join(tmp_path / "s", "index-*.idx"))
    size_kib = os.path.getsize(index) // 1024
    assert size_kib >= 8 << 10
    with PayloadStore(tmp_path / "s", readonly=True) as store:
        assert export_parquet(store, tmp_path / "o.parquet", batch_rows=5000) == n
        assert mapped_kib(index) <= size_kib // 4, (mapped_kib(index), size_kib)
        assert store.get(n) == b"%8d" % (n - 1)       # probes map it again


def damage(path, needle):
    with open(path, "r+b") as f:
        data = f.read()
        at = data.index(needle)
        assert data.count(needle) == 1
        f.seek(at)
        f.write(bytes([data[at] ^ 0xFF]))


def test_a_damaged_dead_record_is_passed_over(tmp_path):
    # The walk of the log stops at a frame that does not check out; the
    # export then walks the index, which never points at the damaged one.
    with PayloadStore(tmp_path / "s") as store:
        store.put(1, b"old value of one " * 20)
        store.put(1, b"new value of one")
        store.put(2, b"two")
    damage(data_file(tmp_path / "s"), b"old value of one " * 20)
    assert export_parquet(tmp_path / "s", tmp_path / "o.parquet") == 2
    assert sorted(exported(tmp_path / "o.parquet")) == [(1, b"new value of one"), (2, b"two")]


def test_a_damaged_live_record_ends_the_export_with_no_file(tmp_path):
    with PayloadStore(tmp_path / "s") as store:
        store.put(1, b"one")
        store.put(2, b"the value of two " * 20)
        store.put(3, b"three")
    damage(data_file(tmp_path / "s"), b"the value of two " * 20)
    with pytest.raises(CorruptPayloadError):
        export_parquet(tmp_path / "s", tmp_path / "o.parquet")
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_the_file_is_synced_before_it_takes_its_name(tmp_path, monkeypatch):
    # a power loss after the rename must not leave the name on a file whose
    # blocks never reached the device
    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(1, 100)), [b"v%d" % i for i in range(1, 100)])
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    export_parquet(tmp_path / "s", tmp_path / "o.parquet")
    (at,) = [i for i, e in enumerate(events) if e[0] == "replace"]
    tmp = os.path.abspath(events[at][1])
    assert ("fsync", tmp) in events[:at]
    assert ("fsync", str(tmp_path)) in events[at:]          # the directory, after


def test_a_killed_export_leaves_only_its_documented_temporary_file(tmp_path):
    """SIGKILL of the exporter (a real process, killed between two batches):
    no target file; the only leftover is ``.NAME.PID.tmp`` beside it, the
    name docs/guide/batch.md gives so it can be found and removed; a later
    export is not disturbed by it."""
    import signal
    import subprocess
    import sys

    from helpers.processes import subprocess_env

    with PayloadStore(tmp_path / "s") as store:
        store.put_many(list(range(500)), [b"v%d" % k for k in range(500)])
    (tmp_path / "out").mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from diskhash import export_parquet\n"
         "def progress(done, total):\n"
         "    print('batch', flush=True)\n"
         "    time.sleep(60)\n"
         "export_parquet(sys.argv[1], sys.argv[2], batch_rows=50, progress=progress)\n",
         str(tmp_path / "s"), str(tmp_path / "out" / "o.parquet")],
        stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert child.stdout.readline() == "batch\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
    assert os.listdir(tmp_path / "out") == [f".o.parquet.{child.pid}.tmp"]
    assert export_parquet(tmp_path / "s", tmp_path / "out" / "o.parquet") == 500
    assert sorted(exported(tmp_path / "out" / "o.parquet")) == [(k, b"v%d" % k) for k in range(500)]
