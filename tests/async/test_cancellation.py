"""Cancelling a task mid-call never damages the index: the call either
completed or never started, and the index stays usable and consistent.
Each test runs on asyncio, uvloop and trio."""

from __future__ import annotations

import threading

import anyio
import pytest
from helpers.gates import GrowGate, wait_event
from helpers.records import fill_to_capacity, record

from diskhash import AsyncDiskHashIndex, DiskHashIndex

pytestmark = pytest.mark.anyio


async def all_other_tasks_blocked() -> None:
    """Return once every other task waits for something (here: a worker thread)."""
    with anyio.fail_after(10):
        await anyio.wait_all_tasks_blocked()


async def check_consistent(path, expected: dict[int, object]) -> None:
    """Reopen from the file: a clean close, exactly `expected`, a valid table."""
    async with await AsyncDiskHashIndex.open(path) as idx:
        assert idx.recovery is None
        await idx.verify()
        assert len(idx) == len(expected)
        assert {k: v async for k, v in idx.items()} == expected


async def test_cancelled_growing_insert_completes_in_its_thread(index_path, monkeypatch):
    """Cancelled while its grow runs in the worker thread: the cancel waits for
    the thread, the insert completed, the grown table is swapped in whole."""
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        keys = fill_to_capacity(idx.sync, start=1)
        gate = GrowGate(monkeypatch)
        done_inside: list[bool] = []
        scope = anyio.CancelScope()

        async def inserter():
            with scope:
                await idx.insert(10**9, record(10**9))
                await anyio.sleep(0)        # the first checkpoint after it
                done_inside.append(True)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(inserter)
                await gate.wait_entered()
                scope.cancel()
                await all_other_tasks_blocked()   # the task cannot finish while its thread runs
                assert not gate.finished.is_set() and done_inside == []
                gate.release()
        finally:
            gate.release()
        assert scope.cancel_called and done_inside == []
        assert gate.finished.is_set()
        # It completed: the entry is there, the table grew, and it is usable.
        assert await idx.get(10**9) == record(10**9)
        assert idx.num_slots == 8192 and len(idx) == len(keys) + 1
        await idx.insert(10**9 + 1, record(10**9 + 1))
        await idx.verify()
    expected = {k: record(k) for k in keys + [10**9, 10**9 + 1]}
    await check_consistent(index_path, expected)


async def test_cancelled_queued_insert_never_starts(index_path, monkeypatch):
    """Cancelled while it waits its turn behind a grow: it never happened."""
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        keys = fill_to_capacity(idx.sync, start=1)
        gate = GrowGate(monkeypatch)
        scope = anyio.CancelScope()

        async def queued():
            with scope:
                await idx.insert(2 * 10**9, record(2 * 10**9))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(idx.insert, 10**9, record(10**9))
                await gate.wait_entered()
                tg.start_soon(queued)
                await all_other_tasks_blocked()
                assert idx._lane.statistics().tasks_waiting == 1     # queued behind the grow
                scope.cancel()
                await all_other_tasks_blocked()
                assert idx._lane.statistics().tasks_waiting == 0     # gave up its turn
                gate.release()
        finally:
            gate.release()
        assert scope.cancelled_caught
        assert await idx.get(2 * 10**9) is None
        assert await idx.get(10**9) == record(10**9)
    await check_consistent(index_path, {k: record(k) for k in keys + [10**9]})


class _SaveProbe:
    """Stands in for the wrapped index so the test sees when save's thread ends."""

    def __init__(self, sync: DiskHashIndex) -> None:
        self._real = sync
        self.started = threading.Event()
        self.ended = threading.Event()

    def save(self) -> None:
        self.started.set()
        try:
            self._real.save()
        finally:
            self.ended.set()

    def __getattr__(self, name):
        return getattr(self._real, name)


async def test_cancelled_save_finishes_its_flush(index_path, monkeypatch):
    """save() is cancelled while its thread waits for the writer lock (a grow
    in another thread holds it): the task ends only after the flush ran, and
    everything is in the file."""
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        keys = fill_to_capacity(idx.sync, start=1)
        probe = _SaveProbe(idx.sync)
        idx._sync = probe             # type: ignore[assignment]
        gate = GrowGate(monkeypatch)
        grower = threading.Thread(target=idx.sync._real.insert, args=(10**9, record(10**9)))
        scope = anyio.CancelScope()
        ended_when_task_ended: list[bool] = []

        async def saver():
            with scope:
                await idx.save()
            ended_when_task_ended.append(probe.ended.is_set())

        grower.start()
        try:
            await gate.wait_entered()        # the grow holds the writer lock
            async with anyio.create_task_group() as tg:
                tg.start_soon(saver)
                await wait_event(probe.started, "save's thread to start")
                scope.cancel()
                await all_other_tasks_blocked()   # the saver waits for its thread
                assert not probe.ended.is_set() and ended_when_task_ended == []
                gate.release()
        finally:
            gate.release()
            await anyio.to_thread.run_sync(grower.join)
            idx._sync = probe._real
        assert ended_when_task_ended == [True]
        assert await idx.get(10**9) == record(10**9)
        await idx.insert(5 * 10**9, record(5 * 10**9))
        await idx.save()
    await check_consistent(index_path, {k: record(k) for k in keys + [10**9, 5 * 10**9]})


async def test_save_cancelled_before_it_starts_changes_nothing(index_path):
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        await idx.insert(1, record(1))
        with anyio.CancelScope() as scope:
            scope.cancel()
            await idx.save()
        assert scope.cancelled_caught
        await idx.insert(2, record(2))
        await idx.save()
    await check_consistent(index_path, {1: record(1), 2: record(2)})


async def test_cancelled_async_with_body_still_closes(index_path):
    with anyio.CancelScope() as scope:
        async with await AsyncDiskHashIndex.open(index_path) as idx:
            await idx.insert(1, record(1))
            scope.cancel()
            await anyio.sleep(1)
    assert scope.cancelled_caught
    assert idx.closed                          # close() was shielded
    await check_consistent(index_path, {1: record(1)})


async def test_open_cancelled_before_it_starts_opens_nothing(tmp_path):
    path = tmp_path / "edges.idx"
    with anyio.CancelScope() as scope:
        scope.cancel()
        await AsyncDiskHashIndex.open(path)
    assert scope.cancelled_caught
    assert not path.exists()


async def test_open_cancelled_while_its_thread_opens_hands_over_the_index(index_path, monkeypatch):
    """The cancel waits for the opening thread, and the open still returns the
    index it opened (the cancel lands at the caller's next checkpoint), so
    ``async with await open(...)`` closes it: nothing leaks, the lock is free."""
    import diskhash._index.aio as aio

    in_thread = threading.Event()
    release = threading.Event()
    real_open = aio._open_counted
    got: list[AsyncDiskHashIndex] = []

    def slow_open(*args, **kwargs):
        idx = real_open(*args, **kwargs)
        in_thread.set()
        release.wait(10)
        return idx

    async def user() -> None:
        async with await AsyncDiskHashIndex.open(index_path) as idx:
            got.append(idx)
            await anyio.sleep(10)

    monkeypatch.setattr(aio, "_open_counted", slow_open)
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(user)
            await wait_event(in_thread, "the open's thread")
            scope.cancel()
            release.set()
    assert scope.cancelled_caught
    assert len(got) == 1 and got[0].closed
    with DiskHashIndex(index_path, timeout=0) as idx:   # IndexLockedError if leaked
        assert idx.recovery is None and len(idx) == 0


async def test_many_cancelled_inserts_leave_a_consistent_index(index_path):
    """Inserts (fast, queued and growing ones) cancelled at random points:
    each key is either fully there or absent; the table verifies."""
    attempted: list[int] = []
    async with await AsyncDiskHashIndex.open(index_path) as idx:
        with anyio.move_on_after(0.2):
            async with anyio.create_task_group() as tg:
                async def insert_range(base: int) -> None:
                    for k in range(base, base + 50_000):
                        attempted.append(k)
                        await idx.insert(k, record(k))
                        if k % 64 == 0:
                            await anyio.sleep(0)
                for w in range(4):
                    tg.start_soon(insert_range, w * 10**6)
        present = {k: v async for k, v in idx.items()}
        assert present and set(present) <= set(attempted)
        assert all(v == record(k) for k, v in present.items())
        await idx.verify()
        await idx.insert(7 * 10**9, record(7 * 10**9))
        present[7 * 10**9] = record(7 * 10**9)
    await check_consistent(index_path, present)
