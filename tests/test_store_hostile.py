"""The hostile pass: odd types, odd paths, races with close(), two event loops."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from diskhash import (
    CorruptPayloadError,
    DiskHashError,
    IndexClosedError,
    PayloadStore,
)


@pytest.mark.parametrize("timeout, exc", [(float("nan"), ValueError), (-1, ValueError),
                                          ("1", TypeError), (True, TypeError)])
def test_bad_timeouts(tmp_path, timeout, exc):
    with pytest.raises(exc):
        PayloadStore(tmp_path / "s", timeout=timeout)


def test_infinite_timeout_means_wait(tmp_path):
    with PayloadStore(tmp_path / "s", timeout=float("inf")) as s:
        s.put(1, b"x")


@pytest.mark.parametrize("sync", [float("nan"), float("inf"), 0, -5, "always", None, True])
def test_bad_sync(tmp_path, sync):
    with pytest.raises((TypeError, ValueError)):
        PayloadStore(tmp_path / "s", sync=sync)


def test_numpy_values_as_keys_and_payloads(tmp_path):
    np = pytest.importorskip("numpy")
    with PayloadStore(tmp_path / "s") as s:
        s.put(np.uint64(5), np.arange(10, dtype=np.uint8))
        assert s.get(5) == bytes(range(10))
        s.put(np.int32(6), np.zeros((2, 3), dtype=np.float64))   # any buffer: its bytes
        assert s.get(6) == bytes(48)
        s.put(7, memoryview(b"abcdef")[::2])                      # not contiguous: copied
        assert s.get(7) == b"ace"
        with pytest.raises((ValueError, OverflowError)):
            s.put(np.int64(-1), b"x")
        with pytest.raises(TypeError):
            s.put(np.float64(1.0), b"x")
        assert len(s) == 3


def test_sync_interval_saves_in_the_background(tmp_path):
    with PayloadStore(tmp_path / "s", sync=20) as s:
        s.put(1, b"x")
        for _ in range(200):
            if s.stats().checkpoint == s._end:
                break
            threading.Event().wait(0.01)
        assert s.stats().checkpoint == s._end


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


@pytest.mark.parametrize("sync, saves", [("save", 1), ("never", 0)])
def test_sync_never_does_not_sync_the_index(tmp_path, sync, saves):
    """sync="never": save() records the checkpoint and fsyncs nothing -- the
    index's msync (an fsync of its map) included -- and a reopen still finds
    every put (the index's writes are in the page cache)."""
    d = tmp_path / "s"
    with PayloadStore(d, sync=sync) as s:
        s.put(2, b"two")                # the data file allocated and mapped first
        real = s._gen.index
        spy = s._gen.index = _SaveSpy(real)
        try:
            s.put(1, b"one")
            s.save()
        finally:
            s._gen.index = real
        assert spy.saves == saves
        assert s.stats().checkpoint == s._end
    with PayloadStore(d, readonly=True) as s:
        assert s.get(1) == b"one"


def test_odd_paths(tmp_path, monkeypatch):
    with pytest.raises(ValueError):
        PayloadStore("")
    monkeypatch.chdir(tmp_path)
    with PayloadStore(".") as s:              # the current directory is a store
        s.put(1, b"here")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with PayloadStore(tmp_path / "link") as s:
        assert s.directory == str(real)
        s.put(2, b"via link")
    with PayloadStore(real, readonly=True) as r:
        assert r.get(2) == b"via link"


def test_fifo_as_data_file(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"x")
        path = s.data_path
    os.unlink(path)
    os.mkfifo(path)
    for readonly in (True, False):
        with pytest.raises(DiskHashError, match="regular file"):
            PayloadStore(d, readonly=readonly, timeout=1)     # and no hang


def test_fifo_as_manifest(tmp_path):
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"x")
    (d / "MANIFEST").unlink()
    os.mkfifo(d / "MANIFEST")
    for readonly in (True, False):
        with pytest.raises(DiskHashError, match="regular file"):
            PayloadStore(d, readonly=readonly)


def test_directory_in_place_of_manifest(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "MANIFEST").mkdir()
    with pytest.raises(DiskHashError, match="regular file"):
        PayloadStore(d)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_directory(tmp_path):  # pragma: no cover - CI runs as a user
    d = tmp_path / "s"
    with PayloadStore(d) as s:
        s.put(1, b"x")
    os.chmod(d, stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(PermissionError):
            PayloadStore(d)
        with PayloadStore(d, readonly=True) as r:
            assert r.get(1) == b"x"
    finally:
        os.chmod(d, 0o755)


def test_foreign_self():
    with pytest.raises(AttributeError):
        PayloadStore.get(object(), 1)
    with pytest.raises(AttributeError):
        PayloadStore.put(object(), 1, b"x")


def _race_close(path, delay: float) -> None:
    s = PayloadStore(path)
    s.put_many(range(500), [b"v%d" % i * 20 for i in range(500)])
    errors: list = []
    start = threading.Barrier(5)

    def hammer(kind: int) -> None:
        start.wait()
        i = 0
        while True:
            i += 1
            k = i % 500
            try:
                if kind == 0:
                    got = s.get(k)
                    if got is not None and got != b"v%d" % k * 20:
                        errors.append((k, got[:20]))
                elif kind == 1:
                    s.put(k, b"v%d" % k * 20)
                elif kind == 2:
                    s.get_many([k, k + 1])
                    if i % 50 == 0:
                        s.stats()
                else:
                    if i % 20 == 0:
                        s.compact()
                    s.save()
            except IndexClosedError:
                return
            except Exception as exc:        # pragma: no cover - reported below
                errors.append(repr(exc))
                return

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    start.wait()
    threading.Event().wait(delay)
    s.close()
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    assert not errors, errors[:3]
    with PayloadStore(path) as s2:
        s2.verify()
        assert all(s2.get(k) == b"v%d" % k * 20 for k in range(500))


def test_close_racing_everything(tmp_path):
    """Threads hammer every call while another closes: each call returns a right
    answer or raises IndexClosedError; nothing crashes, nothing wrong is read."""
    for round_ in range(5):
        _race_close(tmp_path / f"s{round_}", 0.05 * (round_ + 1))


TWO_LOOPS = """
import sys, threading
import anyio
from diskhash import AsyncPayloadStore, PayloadStore

store = PayloadStore(sys.argv[1])
astore = AsyncPayloadStore(store)
errors = []

def loop_thread(base, backend, options):
    async def main():
        for i in range(300):
            await astore.put(base + i, b"%d" % (base + i))
            assert await astore.get(base + i) == b"%d" % (base + i)
            if i % 50 == 0:
                await astore.put(base + i, b"x" * 70000)         # a worker-thread put
                await astore.save()
                await astore.put(base + i, b"%d" % (base + i))
    try:
        anyio.run(main, backend=backend, backend_options=options)
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=loop_thread, args=a) for a in
           ((0, "asyncio", {}), (10_000, "trio", {}), (20_000, "asyncio", {"use_uvloop": True}))]
for t in threads:
    t.start()
for t in threads:
    t.join()

async def count():
    return len([k async for k in astore])   # (iteration while others write raises RuntimeError)

assert anyio.run(count) == 900
store.close()
with PayloadStore(sys.argv[1], readonly=True) as r:
    assert len(r) == 900 and r.get(20_050) == b"20050"
print("ok" if not errors else errors)
"""


def test_two_event_loops_share_one_async_store(tmp_path):
    """Threads with their own event loops (asyncio, trio, uvloop) share one AsyncPayloadStore."""
    import subprocess
    import sys

    from helpers.processes import subprocess_env
    pytest.importorskip("uvloop")
    out = subprocess.run([sys.executable, "-c", TWO_LOOPS, str(tmp_path / "s")], capture_output=True,
                         text=True, timeout=120, env=subprocess_env())
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def test_corrupt_payload_error_pickles():
    import pickle
    e = CorruptPayloadError("/x/data", ["a", "b"], edge_id=5, offset=64)
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.defects, e2.edge_id, e2.offset) == ("/x/data", ["a", "b"], 5, 64)
    assert str(e2) == str(e)


def test_compiled_reader_refuses_foreign_records(tmp_path):
    _store_read = pytest.importorskip("diskhash._store_read")
    with PayloadStore(tmp_path / "s") as s:
        s.put(1, b"x")
        s.get(1)
        reader = s._gen.reader
        for bad in ("str", 5, (1, 2), [1, 2, 3, 4, 5]):
            with pytest.raises(TypeError):
                reader.read(bad, True)
        assert reader.read((1, 10**12, 5, 0, 5), True) == _store_read.BEYOND
        assert reader.read((2, 96, 1, 0, 1), True) == _store_read.MISMATCH     # another key
