"""AsyncPayloadStore mirrors PayloadStore on asyncio and trio (anyio plugin)."""

from __future__ import annotations

import inspect

import anyio
import pytest

from diskhash import AsyncPayloadStore, Compression, PayloadStore
from diskhash._store import aio as _aio_store

SYNC_ONLY = {"keys", "index", "data_path", "compression", "recovery", "last_compaction", "last_salvage",
             "writing"}


def test_mirrors_sync_api():
    sync = {n for n, v in vars(PayloadStore).items()
            if not n.startswith("_") and (callable(v) or isinstance(v, property))}
    amethods = {n for n in vars(AsyncPayloadStore) if not n.startswith("_")}
    missing = sync - amethods - SYNC_ONLY
    assert not missing, missing
    for name in ("put", "get", "meta", "delete", "pop", "put_many", "get_many", "save",
                 "compact", "verify", "rebuild_index", "stats", "close", "contains"):
        assert inspect.iscoroutinefunction(getattr(AsyncPayloadStore, name)), name


@pytest.mark.anyio
async def test_round_trip(tmp_path):
    async with await AsyncPayloadStore.open(tmp_path / "s", compression=Compression.LZ4) as s:
        small = b"small payload " * 50
        big = b"big payload " * 10000           # over INLINE_READ even compressed? check below
        m = await s.put(1, small)
        assert m.compression == Compression.LZ4
        await s.put(2, big, compression=Compression.NONE)
        assert await s.get(1) == small and await s.get(2) == big
        assert await s.get(3) is None and await s.get(3, b"d") == b"d"
        assert (await s.meta(2)).length == len(big) > _aio_store.INLINE_READ
        assert (1 in s) and await s.contains(2) and len(s) == 2
        await s.put_many([5, 6], [b"five", b"six"])
        assert await s.get_many([6, 7, 5]) == [b"six", None, b"five"]
        assert await s.delete(5) and not await s.delete(5)
        assert await s.pop(6) == b"six"
        with pytest.raises(KeyError):
            await s.pop(6)
        assert await s.pop(6, None) is None
        keys = [k async for k in s]
        assert sorted(keys) == [1, 2]
        await s.save()
        await s.compact()
        assert await s.get(2) == big
        assert await s.rebuild_index() == 2
        await s.verify()
        assert (await s.stats()).entries == 2
        fd, off, n = s.payload_range(2)
        assert n == len(big)
    assert s.closed


@pytest.mark.anyio
async def test_inline_put_and_grow(tmp_path):
    async with await AsyncPayloadStore.open(tmp_path / "s") as s:
        for i in range(5000):               # crosses several index grows
            await s.put(i, b"%d" % i)
        assert len(s) == 5000
        assert await s.get_many(list(range(0, 5000, 1000))) == [b"%d" % i for i in range(0, 5000, 1000)]
    with PayloadStore(tmp_path / "s", readonly=True) as r:
        assert r.get(4999) == b"4999"


@pytest.mark.anyio
async def test_cancelled_put_is_whole_or_absent(tmp_path):
    async with await AsyncPayloadStore.open(tmp_path / "s") as s:
        payload = b"x" * (1 << 20)
        with anyio.move_on_after(0.0005):
            await s.put(1, payload)
        got = await s.get(1)
        assert got is None or got == payload
        await s.verify()


@pytest.mark.anyio
async def test_async_iteration_across_a_compaction_is_runtime_error(tmp_path):
    """A hostile pass over PayloadStore and ShardedStore found this."""
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
