"""AsyncDiskHashIndex: the sync API's promises through the async facade, on
asyncio, uvloop and trio (anyio pytest plugin), plus what only the facade
promises: the fast path stays on the loop, and reads go on during a grow."""

from __future__ import annotations

import os
import pickle
import threading
import time

import anyio
import anyio.to_thread
import pytest
from helpers.gates import GrowGate
from helpers.records import fill_to_capacity, record
from helpers.spec_model import file_size

import diskhash
from diskhash import (
    AsyncDiskHashIndex,
    DiskHashIndex,
    IndexClosedError,
    ReadOnlyIndexError,
)
from diskhash._index.table import try_insert

pytestmark = pytest.mark.anyio


def finishes_without_suspending(coro):
    """Drive a coroutine one step: it must return without ever yielding to a loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the coroutine suspended (it awaited something)")


async def test_open_insert_get_contains_len(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        assert isinstance(idx.sync, DiskHashIndex) and not idx.closed
        assert len(idx) == 0
        await idx.insert(7, record(7))
        await idx.insert(2**128 - 1, record(2**128 - 1))
        assert await idx.get(7) == record(7)
        assert await idx.get(8) is None
        assert await idx.get(8, "absent") == "absent"
        assert await idx.contains(7) and not await idx.contains(8)
        assert len(idx) == 2 and idx.sync.get(7) == record(7)
        await idx.insert(7, record(7, offset=99))          # overwrite
        assert len(idx) == 2 and (await idx.get(7)).offset == 99
        assert idx.path == str(index_path) and not idx.readonly and idx.recovery is None
        assert idx.num_slots == 4096 and idx.capacity == 3072 and idx.seed != 0
    assert idx.closed and idx.sync.closed
    with DiskHashIndex(index_path, readonly=True) as sync:
        assert sync[7] == record(7, offset=99) and len(sync) == 2


async def test_inserts_that_grow_keep_everything_across_reopen(index_path):
    keys = list(range(0, 10_000 * 7919, 7919))
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        for k in keys:
            await idx.insert(k, record(k))
        assert idx.num_slots == 16384 and len(idx) == len(keys)
        await idx.verify()
    async with await AsyncDiskHashIndex.open(index_path, readonly=True) as idx:
        assert all([await idx.get(k) == record(k) for k in keys])
        assert len(idx) == len(keys)


async def test_iteration_views_span_several_thread_steps(index_path):
    expected = {k: record(k, offset=k) for k in range(0, 15_000 * 3, 3)}
    async with await AsyncDiskHashIndex.open(index_path, capacity=len(expected)) as idx:
        for k, m in expected.items():
            await idx.insert(k, m)
        assert idx.num_slots > diskhash.aio.ITER_STEP_SLOTS     # more than one hop
        assert sorted([k async for k in idx]) == sorted(expected)
        assert sorted([k async for k in idx.keys()]) == sorted(expected)
        assert sorted([v async for v in idx.values()]) == sorted(expected.values())
        assert {k: v async for k, v in idx.items()} == expected
        assert [k async for k in idx] == list(idx.sync)          # same slot order


async def test_iteration_of_an_empty_index(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        assert [k async for k in idx.items()] == []


async def test_iteration_detects_size_change(index_path):
    async with await AsyncDiskHashIndex.open(index_path, capacity=20_000) as idx:
        for k in range(20_000):
            await idx.insert(k, record(k))
        it = idx.keys()
        await it.__anext__()
        await idx.insert(10**9, record(10**9))
        with pytest.raises(RuntimeError, match="changed size"):
            async for _ in it:
                pass
        # Overwrites do not change the key set: iteration goes on.
        it = idx.keys()
        await it.__anext__()
        await idx.insert(5, record(5, offset=1))
        assert len([k async for k in it]) == len(idx) - 1


@pytest.mark.parametrize("key,exc", [(-1, OverflowError), (2**128, OverflowError), (True, TypeError),
                                     ("1", TypeError), (None, TypeError)])
async def test_bad_keys_are_rejected_everywhere(index_path, key, exc):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        await idx.insert(1, record(1))
        for call in (lambda: idx.get(key), lambda: idx.contains(key), lambda: idx.delete(key),
                     lambda: idx.insert(key, (key, 0, 0, 0, 0)), lambda: idx.pop(key, None)):
            with pytest.raises(exc):
                await call()
        assert len(idx) == 1 and await idx.get(1) == record(1)


@pytest.mark.parametrize("bad,exc", [((1, -1, 0, 0, 0), OverflowError), ((1, 0, 0, 7, 0), ValueError),
                                     ((1, 0, 0, 0), TypeError), (record(2), ValueError)])
async def test_bad_records_are_rejected_and_nothing_changes(index_path, bad, exc):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        await idx.insert(1, record(1))
        with pytest.raises(exc):
            await idx.insert(1, bad)
        assert await idx.get(1) == record(1) and len(idx) == 1


async def test_delete_and_pop(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        for k in range(100):
            await idx.insert(k, record(k))
        assert await idx.delete(5) is True
        assert await idx.delete(5) is False
        assert await idx.pop(6) == record(6)
        assert await idx.pop(6, "gone") == "gone"
        with pytest.raises(KeyError):
            await idx.pop(6)
        assert len(idx) == 98 and not await idx.contains(5) and not await idx.contains(6)
        assert await idx.get(7) == record(7)
        await idx.verify()


async def test_save_stats_reserve_repair(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        for k in range(1000):
            await idx.insert(k, record(k))
        await idx.save()
        s = await idx.stats()
        assert s.entries == 1000 and s.slots == 4096 and s.file_bytes == file_size(4096)
        await idx.reserve(40_000)
        assert idx.num_slots == 65536 and await idx.get(999) == record(999)
        with pytest.raises(ValueError):
            await idx.reserve(-1)
        report = await idx.repair()
        assert report.kept == 1000 and report.dropped == []
        assert await idx.get(0) == record(0)


async def test_readonly_never_writes(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        await idx.insert(1, record(1))
    before = index_path.read_bytes()
    mtime = os.stat(index_path).st_mtime_ns
    async with await AsyncDiskHashIndex.open(index_path, readonly=True) as idx:
        assert idx.readonly
        for call in (lambda: idx.insert(2, record(2)), lambda: idx.insert(1, record(1)),
                     lambda: idx.delete(1), lambda: idx.pop(1), lambda: idx.save(),
                     lambda: idx.repair(), lambda: idx.reserve(10**6)):
            with pytest.raises(ReadOnlyIndexError, match="read-only"):
                await call()
        assert await idx.get(1) == record(1) and len(idx) == 1
        await idx.verify()
    assert index_path.read_bytes() == before
    assert os.stat(index_path).st_mtime_ns == mtime


async def test_open_argument_errors(tmp_path, index_path):
    with pytest.raises(FileNotFoundError):
        await AsyncDiskHashIndex.open(tmp_path / "missing.idx", readonly=True)
    with pytest.raises(ValueError, match="capacity"):
        await AsyncDiskHashIndex.open(index_path, capacity=-1)
    with pytest.raises(ValueError, match="timeout"):
        await AsyncDiskHashIndex.open(index_path, timeout=-1)
    with pytest.raises(TypeError):
        await AsyncDiskHashIndex.open(index_path, True)  # type: ignore[misc]
    assert not index_path.exists()
    with pytest.raises(TypeError, match="wraps a DiskHashIndex"):
        AsyncDiskHashIndex(str(index_path))  # type: ignore[arg-type]


async def test_misuse_is_refused_clearly(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        with pytest.raises(TypeError, match="await index.contains"):
            1 in idx  # noqa: B015
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(idx)
        assert "AsyncDiskHashIndex" in repr(idx) and "0 entries" in repr(idx)


async def test_wraps_an_open_sync_index(index_path):
    with DiskHashIndex(index_path) as sync:
        sync.insert(3, record(3))
        idx = AsyncDiskHashIndex(sync)
        assert await idx.get(3) == record(3)
        await idx.insert(4, record(4))
        assert sync[4] == record(4)


async def test_calls_after_close_raise_clearly(index_path):
    idx = await AsyncDiskHashIndex.open(index_path)
    await idx.insert(1, record(1))
    await idx.close()
    await idx.close()       # idempotent
    assert idx.closed
    calls = [lambda: idx.get(1), lambda: idx.contains(1), lambda: idx.insert(2, record(2)),
             lambda: idx.delete(1), lambda: idx.pop(1), lambda: idx.save(), lambda: idx.stats(),
             lambda: idx.verify(), lambda: idx.repair(), lambda: idx.reserve(10)]
    for call in calls:
        with pytest.raises(IndexClosedError, match="closed"):
            await call()
    with pytest.raises(IndexClosedError):
        len(idx)
    with pytest.raises(IndexClosedError):
        [k async for k in idx]
    with pytest.raises(IndexClosedError):
        async with idx:
            pass


async def test_close_while_other_tasks_use_the_index(index_path):
    """Readers, an iterator, fast and queued writers are all running when
    close() comes: each ends with IndexClosedError, nothing crashes, and the
    file closed cleanly with every completed write in it."""
    idx = await AsyncDiskHashIndex.open(index_path, capacity=30_000)
    for k in range(30_000):
        await idx.insert(k, record(k))
    outcome: dict[str, object] = {}
    started, read, wrote = anyio.Event(), anyio.Event(), anyio.Event()

    async def reader():
        try:
            while True:
                assert await idx.get(17) in (record(17), record(17, offset=1))
                read.set()
                await anyio.sleep(0)
        except IndexClosedError as e:
            outcome["reader"] = e

    async def iterator():
        try:
            async for _ in idx.items():
                started.set()
                await anyio.sleep(0)
        except IndexClosedError as e:
            outcome["iterator"] = e

    async def writer():           # overwrites: the key set (and the iterator) stays valid
        k = 0
        try:
            while True:
                await idx.insert(k, record(k, offset=1))
                k += 1
                wrote.set()
                await anyio.sleep(0)
        except IndexClosedError as e:
            outcome["writer"] = e
            outcome["written"] = k

    try:
        async with anyio.create_task_group() as tg:
            for fn in (reader, iterator, writer):
                tg.start_soon(fn)
            with anyio.fail_after(10):          # all three are under way
                for event in (started, read, wrote):
                    await event.wait()
            await idx.close()
            await idx.close()
    finally:
        await idx.close()
    assert set(outcome) == {"reader", "iterator", "writer", "written"}
    for name in ("reader", "iterator", "writer"):
        assert "closed" in str(outcome[name])
    written = outcome["written"]
    assert 0 < written < 30_000
    async with await AsyncDiskHashIndex.open(index_path) as again:
        assert again.recovery is None        # closed cleanly
        assert len(again) == 30_000
        assert await again.get(written - 1) == record(written - 1, offset=1)
        assert await again.get(written) == record(written)
        await again.verify()


async def test_fast_path_never_hops_to_a_thread(index_path, monkeypatch):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        await idx.insert(1, record(1))

        async def no_threads(*args, **kwargs):
            raise AssertionError("a fast-path call hopped to a worker thread")

        monkeypatch.setattr(anyio.to_thread, "run_sync", no_threads)
        for k in range(2, 1000):
            assert finishes_without_suspending(idx.insert(k, record(k))) is None
        assert finishes_without_suspending(idx.insert(1, record(1, offset=5))) is None
        assert finishes_without_suspending(idx.get(1)) == record(1, offset=5)
        assert finishes_without_suspending(idx.get(10**9)) is None
        assert finishes_without_suspending(idx.contains(500)) is True
        assert len(idx) == 999
        monkeypatch.undo()


async def test_growing_insert_runs_in_a_worker_thread(index_path, monkeypatch):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        keys = fill_to_capacity(idx.sync, start=1)
        gate = GrowGate(monkeypatch)
        gate.release()
        await idx.insert(10**9, record(10**9))
        assert gate.finished.is_set() and gate.threads != [threading.get_ident()]
        assert idx.num_slots == 8192 and len(idx) == len(keys) + 1


async def test_reads_continue_inline_while_a_grow_runs_in_a_thread(index_path, monkeypatch):
    """The grow is held inside its thread (writer lock taken, rehash not done):
    meanwhile inline gets keep completing, fast-path inserts fall back to the
    writer lane without blocking the loop, and only one thread is used."""
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        keys = fill_to_capacity(idx.sync, start=1)
        gate = GrowGate(monkeypatch)
        extra = list(range(10**9, 10**9 + 20))
        reads_during_grow = 0
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(idx.insert, extra[0], record(extra[0]))
                await gate.wait_entered()
                for k in extra[1:]:                # these must wait their turn
                    tg.start_soon(idx.insert, k, record(k))
                for i in range(2000):
                    k = keys[i % len(keys)]
                    assert await idx.get(k) == record(k)
                    assert await idx.contains(k) and not await idx.contains(extra[1])
                    assert not gate.released.is_set()
                    reads_during_grow += 1
                    if i % 100 == 0:
                        await anyio.sleep(0)
                lane = idx._lane.statistics()
                assert lane.locked and lane.tasks_waiting == len(extra) - 1
                assert idx._limiter.statistics().borrowed_tokens == 1     # one thread
                gate.release()
        finally:
            gate.release()
        assert reads_during_grow == 2000 and gate.entered.is_set()
        assert idx.num_slots == 8192 and len(idx) == len(keys) + len(extra)
        assert all([await idx.get(k) == record(k) for k in keys + extra])
        await idx.verify()


async def test_inline_insert_gives_up_rather_than_wait_for_a_long_read(index_path):
    """A thread scanning the table (stats()) holds the map lock shared with the
    GIL released: the fast path must then give up at once (and the insert go
    to the writer lane), not block the loop until the scan ends."""
    async with await AsyncDiskHashIndex.open(index_path, capacity=700_000) as idx:
        assert idx.num_slots == 2**20
        await idx.insert(1, record(1))
        stop = threading.Event()

        def scanner() -> None:
            while not stop.is_set():
                idx.sync.stats()

        thread = threading.Thread(target=scanner)
        thread.start()
        gave_up = done = 0
        try:
            deadline = time.monotonic() + 20          # a bound, not a timing check
            while not gave_up and time.monotonic() < deadline:
                if try_insert(idx.sync, 1, record(1, offset=done)):
                    done += 1
                else:
                    gave_up += 1
            await idx.insert(1, record(1, offset=12345))      # falls back to the lane if need be
        finally:
            stop.set()
            await anyio.to_thread.run_sync(thread.join)
        assert gave_up == 1
        assert await idx.get(1) == record(1, offset=12345) and len(idx) == 1


async def test_public_api_is_exported():
    assert diskhash.AsyncDiskHashIndex is AsyncDiskHashIndex
    assert "AsyncDiskHashIndex" in diskhash.__all__
    for name in ("get", "contains", "insert", "delete", "pop", "reserve", "save", "stats",
                 "verify", "repair", "close", "keys", "values", "items", "get_many",
                 "contains_many", "insert_many"):
        assert callable(getattr(AsyncDiskHashIndex, name)), name
    sync_names = {n for n in dir(DiskHashIndex) if not n.startswith("_")}
    missing = sync_names - set(dir(AsyncDiskHashIndex))
    assert missing == {"writing"}, missing      # (see test_mirror.SYNC_ONLY)


class _BatchProbe:
    """Stands in for the core's batch hooks (implemented in diskhash._index.batch,
    which may be absent): records which thread each batch call ran on."""

    def __init__(self, sync: DiskHashIndex) -> None:
        self._real = sync
        self.calls: list[tuple[str, int, bool]] = []

    def _record(self, name: str, keys) -> str:
        self.calls.append((name, len(keys), threading.current_thread() is threading.main_thread()))
        return name

    def get_many(self, keys):
        return self._record("get_many", keys)

    def contains_many(self, keys):
        return self._record("contains_many", keys)

    def insert_many(self, keys, records):
        self._record("insert_many", keys)

    def __getattr__(self, name):
        return getattr(self._real, name)


async def test_batch_calls_run_small_lookups_inline_and_the_rest_in_a_thread(index_path):
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("the event loop does not run on the main thread here")
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        probe = _BatchProbe(idx.sync)
        idx._sync = probe                         # type: ignore[assignment]
        try:
            small, large = [0] * diskhash.aio.INLINE_BATCH, [0] * (diskhash.aio.INLINE_BATCH + 1)
            assert await idx.get_many(small) == "get_many"
            assert await idx.contains_many(small) == "contains_many"
            assert await idx.get_many(large) == "get_many"
            assert await idx.contains_many(large) == "contains_many"
            assert await idx.insert_many(small, small) is None
        finally:
            idx._sync = probe._real
        n, m = diskhash.aio.INLINE_BATCH, diskhash.aio.INLINE_BATCH + 1
        assert probe.calls == [("get_many", n, True), ("contains_many", n, True),
                               ("get_many", m, False), ("contains_many", m, False),
                               ("insert_many", n, False)]


async def test_batch_calls_give_the_sync_answers(index_path):
    """The real batch calls through the facade: same answers as the sync calls,
    errors as the sync calls raise them, on every backend."""
    np = pytest.importorskip("numpy")
    n = diskhash.aio.INLINE_BATCH * 2                  # inline and threaded lookups both
    keys = np.arange(1, n + 1, dtype=np.uint64) * 0x9E3779B97F4A7C15
    recs = np.zeros(n, dtype=diskhash.META_DTYPE)
    recs["offset"] = np.arange(n)
    recs["length"] = 7
    recs["compression"] = np.arange(n) % 3
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        await idx.insert_many(keys, recs)              # grows from 4096 slots: in the lane
        assert len(idx) == n and idx.num_slots > 4096
        probe = np.concatenate([keys[::3], keys[:100] + 1])  # hits and misses
        for batch in (probe[:100], probe):                  # inline, then threaded
            got = await idx.get_many(batch)
            assert np.array_equal(got, idx.sync.get_many(batch))
            assert np.array_equal(await idx.contains_many(batch), got["found"])
        assert (await idx.get(int(keys[5]))).offset == 5
        bad = recs[:10].copy()
        bad["compression"][3] = 9
        with pytest.raises(ValueError, match="compression"):
            await idx.insert_many(keys[:10], bad)
        assert len(idx) == n


@pytest.mark.anyio
async def test_async_iteration_stops_at_the_next_item_after_a_delete(index_path):
    """A hostile pass over the index, its files and the CLI found this."""
    from diskhash import AsyncDiskHashIndex, IndexClosedError

    idx = await AsyncDiskHashIndex.open(index_path)
    async with idx:
        for k in range(100):
            await idx.insert(k, record(k))
        order = list(idx.sync.keys())
        it = idx.keys().__aiter__()
        await it.__anext__()
        await idx.delete(order[5])
        with pytest.raises(RuntimeError, match="changed size during iteration"):
            await it.__anext__()
        it = idx.items().__aiter__()
        await it.__anext__()
    with pytest.raises(IndexClosedError):
        await it.__anext__()
