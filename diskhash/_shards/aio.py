"""AsyncShardedStore: the ShardedStore API for asyncio (uvloop too) and trio, on anyio.

Scheduling is all this module adds: each shard is an ``AsyncPayloadStore``
around the ``ShardedStore``'s own shard, so every lane and rule is that
class's; batch and whole-set calls run on the shards concurrently (one task
per shard) and raise the first shard's error as the sync class would.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio

from diskhash import _threads
from diskhash._shards.manifest import Manifest
from diskhash._shards.sharded import ShardAccess, ShardedStats, ShardedStore, payload_array
from diskhash._store import arrow as _arrow
from diskhash._store.aio import AsyncPayloadStore

__all__ = ["AsyncShardedStore"]

_T = TypeVar("_T")
_MISSING: Any = object()


async def _fan(calls: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
    """Run ``calls`` concurrently; their results in order, or the first
    failing call's exception (not an exception group: the sync class's error)."""
    results: list[Any] = [None] * len(calls)
    errors: list[Exception | None] = [None] * len(calls)

    async def run(i: int, call: Callable[[], Awaitable[_T]]) -> None:
        try:
            results[i] = await call()
        except Exception as exc:
            errors[i] = exc

    async with anyio.create_task_group() as tg:
        for i, call in enumerate(calls):
            tg.start_soon(run, i, call)
    for exc in errors:
        if exc is not None:
            raise exc
    return results


class AsyncShardedStore:
    """``ShardedStore`` for async code: ``await AsyncShardedStore.open(directory, shards=N)``.

    Mirrors the sync class method for method (same names, arguments and
    errors); the wrapped set is ``.sync``.  ``edge_id in astore`` and
    ``len(astore)`` work inline, as on ``AsyncPayloadStore``.
    """

    def __init__(self, sync: ShardedStore) -> None:
        """Wrap an open ``ShardedStore`` (``open()`` is the usual way in)."""
        if not isinstance(sync, ShardedStore):
            raise TypeError(f"AsyncShardedStore wraps a ShardedStore, got {type(sync).__name__}")
        self._sync = sync
        self._set = ShardAccess(sync)
        self._shards = tuple(AsyncPayloadStore(s) for s in self._set.stores)

    @classmethod
    async def open(cls, directory: str | os.PathLike[str], shards: int | None = None,
                   **kwargs: Any) -> AsyncShardedStore:
        """Open (or create) the set in a worker thread; arguments as for ``ShardedStore``."""
        store = await _threads.run_sync(
            functools.partial(ShardedStore, directory, shards, **kwargs))
        return cls(store)

    @property
    def sync(self) -> ShardedStore:
        """The wrapped ``ShardedStore`` (shares its shards)."""
        return self._sync

    def shard_of(self, edge_id: Any) -> int:
        """As ``ShardedStore.shard_of``."""
        return self._sync.shard_of(edge_id)

    def _shard(self, edge_id: Any) -> AsyncPayloadStore:
        if not self._shards:
            self._set.check_open()
        return self._shards[self._sync.shard_of(edge_id)]

    # -- single-key calls --------------------------------------------------
    async def put(self, edge_id: Any, payload: Any, *, compression: Any = None) -> Any:
        """As ``ShardedStore.put`` (the shard's ``AsyncPayloadStore.put``)."""
        return await self._shard(edge_id).put(edge_id, payload, compression=compression)

    async def get(self, edge_id: Any, default: Any = None) -> Any:
        """As ``ShardedStore.get``."""
        return await self._shard(edge_id).get(edge_id, default)

    async def meta(self, edge_id: Any) -> Any:
        """As ``ShardedStore.meta``."""
        return await self._shard(edge_id).meta(edge_id)

    async def contains(self, edge_id: Any) -> bool:
        """``edge_id in store``, awaitable."""
        return edge_id in self._sync

    def __contains__(self, edge_id: object) -> bool:
        return edge_id in self._sync

    def __len__(self) -> int:
        return len(self._sync)

    async def _keys(self) -> AsyncIterator[int]:
        self._set.check_open()
        for shard in self._shards:
            async for key in shard:
                yield key

    def __aiter__(self) -> AsyncIterator[int]:
        """Every key, shard after shard (fetched in worker threads)."""
        return self._keys()

    def keys(self) -> AsyncIterator[int]:
        """As ``__aiter__``: ``async for key in store.keys()``, like ``ShardedStore.keys()``."""
        return self._keys()

    def payload_range(self, edge_id: Any) -> Any:
        """As ``ShardedStore.payload_range`` (sync: an index probe)."""
        return self._shard(edge_id).payload_range(edge_id)

    async def delete(self, edge_id: Any) -> bool:
        """As ``ShardedStore.delete``."""
        return await self._shard(edge_id).delete(edge_id)

    async def pop(self, edge_id: Any, default: Any = _MISSING) -> Any:
        """As ``ShardedStore.pop``."""
        shard = self._shard(edge_id)
        if default is _MISSING:
            return await shard.pop(edge_id)
        return await shard.pop(edge_id, default)

    # -- batch calls -------------------------------------------------------
    async def put_many(self, edge_ids: Any, payloads: Sequence[Any], *,
                       compression: Any = None) -> None:
        """As ``ShardedStore.put_many``; the shards are written concurrently."""
        self._set.check_open()
        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        keys, order, bounds = self._set.route(edge_ids)
        if _arrow.is_arrow(payloads):
            _arrow.payload_pieces(payloads, len(keys))        # (checked whole before any shard is written)
            await _fan([functools.partial(shard.put_many, keys[order[bounds[s]:bounds[s + 1]]],
                                          _arrow.payload_share(payloads, order[bounds[s]:bounds[s + 1]]),
                                          compression=compression)
                        for s, shard in enumerate(self._shards) if bounds[s + 1] > bounds[s]])
            return
        data = payload_array(payloads, len(keys))
        calls = []
        for s, shard in enumerate(self._shards):
            lo, hi = bounds[s], bounds[s + 1]
            if hi > lo:
                idx = order[lo:hi]
                calls.append(functools.partial(shard.put_many, keys[idx], data[idx].tolist(),
                                               compression=compression))
        await _fan(calls)

    async def get_many(self, edge_ids: Any) -> list[bytes | None]:
        """As ``ShardedStore.get_many``; the shards are read concurrently."""
        from diskhash._index.dtypes import np

        self._set.check_open()
        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        keys, order, bounds = self._set.route(edge_ids)
        parts = []
        calls = []
        for s, shard in enumerate(self._shards):
            lo, hi = bounds[s], bounds[s + 1]
            if hi > lo:
                idx = order[lo:hi]
                parts.append(idx)
                calls.append(functools.partial(shard.get_many, keys[idx]))
        found = await _fan(calls)
        out = np.empty(len(keys), dtype=object)
        for idx, res in zip(parts, found):
            part = np.empty(len(idx), dtype=object)
            part[:] = res
            out[idx] = part
        return out.tolist()

    async def get_many_arrow(self, edge_ids: Any) -> Any:
        """As ``ShardedStore.get_many_arrow``; the shards are read concurrently."""
        self._set.check_open()
        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        keys, order, bounds = self._set.route(edge_ids)
        places = [order[bounds[s]:bounds[s + 1]] for s in range(len(self._shards))]
        calls = [functools.partial(shard.get_many_arrow, keys[places[s]])
                 for s, shard in enumerate(self._shards) if len(places[s])]
        found = await _fan(calls)
        return _arrow.in_key_order(list(zip([p for p in places if len(p)], found)), len(keys))

    # -- whole-set calls ---------------------------------------------------
    async def save(self) -> None:
        """As ``ShardedStore.save``; the shards save concurrently."""
        self._set.check_open()
        await _fan([shard.save for shard in self._shards])

    async def compact(self, *, salvage: bool = False) -> None:
        """As ``ShardedStore.compact``; the shards compact concurrently."""
        self._set.check_open()
        await _fan([functools.partial(shard.compact, salvage=salvage) for shard in self._shards])

    async def rebuild_index(self, progress: Callable[[int, int], Any] | None = None, *,
                            salvage: bool = False) -> int:
        """As ``ShardedStore.rebuild_index``, in a worker thread."""
        return await _threads.run_sync(functools.partial(self._sync.rebuild_index, salvage=salvage),
                                       progress)

    async def verify(self) -> None:
        """As ``ShardedStore.verify`` (markers, then every shard), in worker threads."""
        self._set.check_open()
        await _threads.run_sync(self._set.verify_layout)
        for shard in self._shards:
            await shard.verify()

    async def stats(self) -> ShardedStats:
        """As ``ShardedStore.stats``."""
        self._set.check_open()
        per = tuple(await _fan([shard.stats for shard in self._shards]))
        return ShardedStats(sum(p.entries for p in per), sum(p.data_bytes for p in per),
                            sum(p.live_bytes for p in per), per)

    async def close(self) -> None:
        """Close every shard (saving writable ones); idempotent.  Shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            for shard in self._shards:
                await shard.close()
            await _threads.run_sync(self._sync.close)

    @property
    def closed(self) -> bool:
        return self._sync.closed

    @property
    def directory(self) -> str:
        return self._sync.directory

    @property
    def readonly(self) -> bool:
        return self._sync.readonly

    @property
    def shards(self) -> int:
        return self._sync.shards

    @property
    def manifest(self) -> Manifest:
        return self._sync.manifest

    async def __aenter__(self) -> AsyncShardedStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncShardedStore wrapping {self._sync!r}>"
