"""AsyncShardedStore mirrors ShardedStore on asyncio, uvloop and trio (anyio plugin)."""

from __future__ import annotations

import inspect
from pathlib import Path

import anyio
import numpy as np
import pytest
from helpers.records import random_key_array

from diskhash import (
    AsyncShardedStore,
    IndexClosedError,
    ShardedStore,
    ShardMismatchError,
)

SYNC_ONLY = {"keys"}


def test_mirrors_sync_api() -> None:
    sync = {n for n, v in vars(ShardedStore).items()
            if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    amethods = {n for n in vars(AsyncShardedStore) if not n.startswith("_")}
    missing = sync - amethods - SYNC_ONLY
    assert not missing, missing
    for name in ("put", "get", "meta", "delete", "pop", "put_many", "get_many", "save",
                 "compact", "verify", "rebuild_index", "stats", "close", "contains", "open"):
        assert inspect.iscoroutinefunction(getattr(AsyncShardedStore, name)), name


def keys_and_payloads(n: int) -> tuple[np.ndarray, list[bytes]]:
    rng = np.random.default_rng(5)
    keys = random_key_array(rng, n)
    return keys, [rng.bytes(int(rng.integers(0, 200))) for _ in range(n)]


@pytest.mark.anyio
async def test_same_answers_as_the_sync_set(tmp_path: Path) -> None:
    keys, payloads = keys_and_payloads(1500)
    async with await AsyncShardedStore.open(tmp_path / "a", shards=4) as a:
        await a.put_many(keys, payloads)
        await a.put(5, b"five")
        assert await a.get(5) == b"five" and 5 in a and await a.contains(5)
        assert (await a.meta(5)).length == 4
        assert a.payload_range(5) is not None
        assert await a.delete(5) and not await a.delete(5)
        await a.put(6, b"six")
        assert await a.pop(6) == b"six" and await a.pop(6, None) is None
        with pytest.raises(KeyError):
            await a.pop(6)
        assert await a.get_many(keys) == payloads
        assert len(a) == 1500
        assert sorted([k async for k in a]) == sorted(a.sync)
        await a.save()
        await a.verify()
        st = await a.stats()
        assert st.entries == 1500 and len(st.shards) == 4
        await a.compact()
        assert await a.rebuild_index() == 1500
        assert a.shards == 4 and not a.readonly and a.directory == a.sync.directory
        assert a.shard_of(5) == a.sync.shard_of(5) and a.manifest is a.sync.manifest
    assert a.closed
    with ShardedStore(tmp_path / "a", readonly=True) as sync:
        assert sync.get_many(keys) == payloads


@pytest.mark.anyio
async def test_errors_are_the_sync_ones(tmp_path: Path) -> None:
    async with await AsyncShardedStore.open(tmp_path / "a", shards=3) as a:
        with pytest.raises(TypeError):
            await a.put_many([1, 2], [b"x", "y"])
        with pytest.raises(OverflowError):
            await a.get_many([1, -2])
        with pytest.raises(TypeError):
            await a.get("k")
        assert len(a) == 0
    with pytest.raises(IndexClosedError):
        await a.get_many([1])
    with pytest.raises(ShardMismatchError):
        await AsyncShardedStore.open(tmp_path / "a", shards=5)
    with pytest.raises(TypeError):
        AsyncShardedStore(object())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_concurrent_batches(tmp_path: Path) -> None:
    keys, payloads = keys_and_payloads(800)
    async with await AsyncShardedStore.open(tmp_path / "a", shards=4) as a:
        await a.put_many(keys, payloads)
        results: list[list[bytes | None]] = []

        async def read(lo: int) -> None:
            results.append(await a.get_many(keys[lo:lo + 200]))

        async with anyio.create_task_group() as tg:
            for lo in range(0, 800, 200):
                tg.start_soon(read, lo)
        assert sorted(map(tuple, results)) == sorted(tuple(payloads[lo:lo + 200])
                                                      for lo in range(0, 800, 200))


def test_one_async_set_shared_by_two_event_loops(tmp_path: Path) -> None:
    # asyncio in one thread, trio in another, one AsyncShardedStore: no
    # loop-bound state of ours (each shard's lane is AsyncPayloadStore's).
    import threading

    import trio

    keys, payloads = keys_and_payloads(400)
    store = anyio.run(AsyncShardedStore.open, tmp_path / "a", 3)
    anyio.run(store.put_many, keys, payloads)
    errors: list[BaseException] = []

    async def work(offset: int) -> None:
        for i in range(30):
            await store.put(10**6 + offset * 1000 + i, b"v%d" % i)
            assert await store.get_many(keys[i:i + 50]) == payloads[i:i + 50]

    def run(backend: str, offset: int) -> None:
        try:
            if backend == "trio":
                trio.run(work, offset)
            else:
                anyio.run(work, offset, backend=backend)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b, n)) for n, b in enumerate(["asyncio", "trio"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(store) == 460
    anyio.run(store.close)
