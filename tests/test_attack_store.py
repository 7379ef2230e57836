"""Regressions found by the hostile pass over PayloadStore / ShardedStore (attack11).

Crash and hang cases run in a child Python with a timeout.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from helpers.processes import subprocess_env

from diskhash import PayloadStore


def _child(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=subprocess_env())


def test_compiled_reader_offset_that_wraps_past_2_64_is_beyond_not_a_segfault():
    # offset + length wrapped around 2**64 and passed the bounds check: memcpy
    # from before the map (SIGSEGV).
    proc = _child("""
        import mmap
        from diskhash._store_read import BEYOND, MapReader
        r = MapReader(mmap.mmap(-1, 4096))
        meta = (0, 2**64 - 16, 32, 0, 32)
        assert r.read(meta, True) == BEYOND, r.read(meta, True)
        assert r.read((0, 4000, 2**64 - 1, 0, 0), False) == BEYOND
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("func", ["scan_into", "copy_live"])
def test_compiled_scanners_refuse_a_negative_start(func):
    # A negative start read before the buffer (out of bounds; a segfault on a map).
    args = {"scan_into": "(mm, -4096, 0, {})",
            "copy_live": "(mm, -4096, 0, lambda k: None, [], {}, 0)"}[func]
    proc = _child(f"""
        import mmap
        from diskhash import _store_read
        mm = mmap.mmap(-1, 4096)
        mm[:] = b"\\xff" * 4096
        try:
            _store_read.{func}{args}
        except ValueError as exc:
            print("ValueError", exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ValueError"), proc.stdout


@pytest.mark.parametrize("call", ["close", "compact", "rebuild_index"])
def test_progress_callback_reentering_maintenance_raises_not_deadlocks(tmp_path, call):
    # rebuild_index() holds the (non-reentrant) maintenance lock while it calls
    # progress(); a callback calling close()/compact() hung forever.
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


def test_signed_structured_key_array_is_refused_before_any_write(tmp_path):
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


def test_stats_racing_rebuild_index_is_not_file_not_found(tmp_path, monkeypatch):
    # stats() took the generation, then rebuild_index() (another thread)
    # unlinked its index file: os.path.getsize raised FileNotFoundError.
    import os

    with PayloadStore(tmp_path / "s") as s:
        for i in range(20):
            s.put(i, b"x" * i)
        real = os.path.getsize
        raced = []

        def getsize(path):
            if not raced and str(path).endswith(".idx"):
                raced.append(path)
                s.rebuild_index()          # what a racing thread does at this moment
            return real(path)

        monkeypatch.setattr(os.path, "getsize", getsize)
        st = s.stats()
        monkeypatch.undo()
        assert raced and st.entries == 20
        assert st.index_generation == 2
        assert st.index_bytes == real(os.path.join(s.directory, "index-000002.idx"))


def test_sharded_store_dirs_swapped_behind_the_markers_is_a_mismatch(tmp_path):
    # The shard.json markers stayed in place while two shards' store/
    # directories were swapped: the set opened and half the gets answered None.
    import os

    from diskhash import ShardedStore, ShardMismatchError

    d = tmp_path / "set"
    with ShardedStore(d, shards=4) as s:
        s.put_many(list(range(200)), [b"v%d" % i for i in range(200)])
        a = s.manifest.shard_dir(str(d), 0)
        b = s.manifest.shard_dir(str(d), 1)
    sa, sb = os.path.join(a, "store"), os.path.join(b, "store")
    os.rename(sa, sa + ".x")
    os.rename(sb, sa)
    os.rename(sa + ".x", sb)
    for readonly in (True, False):
        with pytest.raises(ShardMismatchError, match="routes to shard"):
            ShardedStore(d, readonly=readonly)
    os.rename(sa, sa + ".x")
    os.rename(sb, sa)
    os.rename(sa + ".x", sb)
    with ShardedStore(d, readonly=True) as r:
        assert r.get_many(list(range(200))) == [b"v%d" % i for i in range(200)]
        r.verify()


@pytest.mark.parametrize("op", ["compact", "rebuild_index"])
def test_iteration_across_a_compaction_is_runtime_error_not_closed(tmp_path, op):
    # The key iterator outlived the generation compact()/rebuild_index()
    # replaced: it raised IndexClosedError although the store was open.
    from diskhash import IndexClosedError

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(5000)), [b"x"] * 5000)
        it = iter(s)
        first = [next(it) for _ in range(10)]
        getattr(s, op)()
        with pytest.raises(RuntimeError, match="replaced the index during iteration"):
            list(it)
        assert len(set(first)) == 10 and sorted(s) == list(range(5000))
        it = s.keys()
        next(it)
    with pytest.raises(IndexClosedError):
        list(it)


def test_compact_failing_to_create_its_data_file_leaves_no_file(tmp_path, monkeypatch):
    # On a full ext4 image compact() failed writing the new data file's header
    # and left data-000002.dat behind (found with a 24 MiB loop image).
    import errno
    import os

    with PayloadStore(tmp_path / "s") as s:
        s.put_many(list(range(100)), [b"v%d" % i for i in range(100)])
        s.delete(3)

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(OSError) as info:
            s.compact()
        monkeypatch.undo()
        assert info.value.errno == errno.ENOSPC
        assert not [n for n in os.listdir(s.directory) if n.startswith("data-") and n != "data-000001.dat"]
        assert len(s) == 99 and s.get(50) == b"v50"
        s.compact()
        assert s.get_many([2, 3, 4]) == [b"v2", None, b"v4"]


@pytest.mark.anyio
async def test_async_iteration_across_a_compaction_is_runtime_error(tmp_path):
    from diskhash import AsyncPayloadStore

    s = await AsyncPayloadStore.open(tmp_path / "s")
    try:
        await s.put_many(list(range(20000)), [b"x"] * 20000)
        n = 0
        with pytest.raises(RuntimeError, match="replaced the index during iteration"):
            async for _ in s:
                n += 1
                if n == 10:
                    await s.compact()
        assert len(s) == 20000
    finally:
        await s.close()


@pytest.mark.parametrize("kwargs, exc", [({"foo": 1}, TypeError),
                                         ({"compression": "x"}, ValueError)])
def test_sharded_create_with_a_bad_argument_leaves_nothing_behind(tmp_path, kwargs, exc):
    # The first shard's PayloadStore refused the argument after its directory
    # was made: the set directory then never opened ("unfinished build").
    import os

    from diskhash import ShardedStore

    d = tmp_path / "set"
    with pytest.raises(exc):
        ShardedStore(d, shards=3, **kwargs)
    assert not d.exists() or os.listdir(d) == []
    with ShardedStore(d, shards=3) as s:
        s.put(1, b"one")
    with ShardedStore(d, readonly=True) as r:
        assert r.get(1) == b"one"
