"""Each async twin offers its sync class's public methods and properties, by
name: a method added to one side only is a test failure, not a surprise."""

from __future__ import annotations

import pytest

from diskhash import AsyncPayloadStore, AsyncShardedStore, DiskHashIndex, PayloadStore, ShardedStore
from diskhash.aio import AsyncDiskHashIndex

#: What only the async side has, on purpose: ``open`` (the awaitable
#: constructor), ``sync`` (the wrapped object) and ``contains`` (``in``
#: cannot be awaited).
ASYNC_ONLY = {"open", "sync", "contains"}
#: What only the sync side has, on purpose: ``PayloadStore.index`` hands out
#: the sync index, shared with the store (reach it as ``store.sync.index``).
# writing(): the sync block's locks are owned by the thread that took them,
# and the async facade runs each call inline or in a worker thread, so a
# block cannot span awaits (docs/guide/processes.md); batch with put_many.
SYNC_ONLY = {PayloadStore: {"index", "writing"}, DiskHashIndex: {"writing"}, ShardedStore: set()}


def _public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


@pytest.mark.parametrize("sync_cls,async_cls", [
    (PayloadStore, AsyncPayloadStore),
    (DiskHashIndex, AsyncDiskHashIndex),
    (ShardedStore, AsyncShardedStore),
], ids=lambda c: c.__name__)
def test_async_twin_mirrors_its_sync_class(sync_cls: type, async_cls: type) -> None:
    sync, twin = _public(sync_cls), _public(async_cls)
    assert sync - twin == SYNC_ONLY[sync_cls], f"{async_cls.__name__} lacks {sorted(sync - twin)}"
    assert twin - sync == ASYNC_ONLY, f"{async_cls.__name__} adds {sorted(twin - sync - ASYNC_ONLY)}"


@pytest.mark.anyio
async def test_async_store_keys_are_the_sync_keys(tmp_path) -> None:
    with PayloadStore(tmp_path / "s") as s:
        s.put_many([3, 1, 2], [b"a", b"b", b"c"])
        store = AsyncPayloadStore(s)
        assert [k async for k in store.keys()] == list(s.keys())
        assert store.compression == s.compression and store.data_path == s.data_path
    with ShardedStore(tmp_path / "set", shards=2) as sh:
        sh.put_many([5, 6, 7], [b"x", b"y", b"z"])
        assert sorted([k async for k in AsyncShardedStore(sh).keys()]) == sorted(sh.keys())
