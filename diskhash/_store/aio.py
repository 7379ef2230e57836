"""AsyncPayloadStore: the PayloadStore API for asyncio (uvloop too) and trio, on anyio.

Scheduling is all this module adds; the rules are PayloadStore's.  Lanes:

* inline, on the event loop: ``get``/``get_many`` of payloads up to
  ``INLINE_READ`` bytes (an index probe plus one ``pread`` from the page
  cache, a few microseconds), ``meta``, ``contains``, ``len()``,
  ``payload_range``, and a ``put`` of at most ``INLINE_WRITE`` bytes when the
  writer lock is free and the index needs no grow (one ``pwrite`` into the
  page cache plus an index store);
* the writer lane: other puts, ``put_many``, ``delete``, ``pop``, ``save``,
  ``rebuild_index``, ``close`` run in anyio worker threads (the loop's default
  thread limiter), where they queue on the store's write lock; ``compact``,
  ``verify``, ``stats`` run in worker threads too.  Nothing loop-bound is
  shared between calls, so one store may serve several event loops;
* big reads (over ``INLINE_READ``) in worker threads, outside the lane.

An inline read of a page that is not in memory blocks the loop for one disk
read: the trade-off and its measured cost are in docs/performance.md
(``benchmarks/store_loop_stall.py``).  Cancellation never interrupts a
worker thread (anyio's ``abandon_on_cancel=False``) and inline work has no
await inside, so a cancelled write either completed or never started.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, TypeVar

import anyio

from diskhash import _threads
from diskhash._index.aio import AsyncDiskHashIndex
from diskhash._store.keys import key_int, payload_view
from diskhash._store.maintenance import StoreStats
from diskhash._store.reader import ReadLater
from diskhash._store.store import FOLLOW, InlineReads, PayloadStore
from diskhash._types import Compression, PayloadMeta
from diskhash.errors import IndexClosedError

__all__ = ["AsyncPayloadStore", "INLINE_READ", "INLINE_WRITE"]

_T = TypeVar("_T")
_MISSING: Any = object()

#: Payloads (stored bytes) up to this size are read on the event loop.
INLINE_READ = 16 * 1024
#: Puts of payloads up to this size may run on the event loop.
INLINE_WRITE = 16 * 1024


class AsyncPayloadStore:
    """``PayloadStore`` for async code: ``await AsyncPayloadStore.open(directory, ...)``.

    Mirrors the sync class method for method (same names, arguments, errors);
    the wrapped store is ``.sync``.  ``edge_id in astore`` and ``len(astore)``
    work as on the sync store (inline), and so does ``await astore.contains(k)``.
    """

    def __init__(self, sync: PayloadStore, *, inline_read: "int | None" = None) -> None:
        """Wrap an open ``PayloadStore`` (``open()`` is the usual way in).

        ``inline_read``: payloads of at most this many stored bytes are read on
        the event loop (default ``INLINE_READ``); 0 sends every read to a
        worker thread, for data sets mostly not in the page cache.
        """
        if not isinstance(sync, PayloadStore):
            raise TypeError(f"AsyncPayloadStore wraps a PayloadStore, got {type(sync).__name__}")
        if inline_read is not None and (isinstance(inline_read, bool) or not isinstance(inline_read, int)
                                        or inline_read < 0):
            raise ValueError(f"inline_read must be an int >= 0, not {inline_read!r}")
        self._inline_read = inline_read
        self._sync = sync
        self._reads = InlineReads(sync)

    @classmethod
    async def open(cls, directory: "str | os.PathLike[str]", *, inline_read: "int | None" = None,
                   **kwargs: Any) -> "AsyncPayloadStore":
        """Open (or create) the store in a worker thread; arguments as for
        ``PayloadStore``, plus ``inline_read`` (see the constructor).

        A cancelled open either returned the store or opened nothing.
        """
        if inline_read is not None and (isinstance(inline_read, bool) or not isinstance(inline_read, int)
                                        or inline_read < 0):
            raise ValueError(f"inline_read must be an int >= 0, not {inline_read!r}")
        store = await _threads.run_sync(functools.partial(PayloadStore, directory, **kwargs))
        return cls(store, inline_read=inline_read)

    @property
    def sync(self) -> PayloadStore:
        """The wrapped ``PayloadStore`` (shares state, locks and files)."""
        return self._sync

    async def _thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await _threads.run_sync(fn, *args)

    # The writer lane is the sync store's write lock, taken in the worker thread:
    # no anyio primitive is shared between calls, so one AsyncPayloadStore may be
    # used from several event loops (threads) at once without a hang.
    _in_lane = _thread

    # -- reads ----------------------------------------------------------------------

    async def get(self, edge_id: Any, default: Any = None) -> Any:
        """The payload under ``edge_id`` or ``default``: inline up to ``INLINE_READ``
        stored bytes, else in a worker thread.  Errors as for ``PayloadStore.get``."""
        if _threads.pending:
            _threads.handoff()
        limit = INLINE_READ if self._inline_read is None else self._inline_read
        got = self._reads.get(edge_id, default, limit)
        if got is FOLLOW:           # another process's compact(): its files opened off the loop
            await self._thread(self._reads.follow)
            got = self._reads.get(edge_id, default, limit)
        if type(got) is ReadLater:
            return await self._thread(self._reads.read, got.gen, got.meta)
        return got

    async def meta(self, edge_id: Any) -> "PayloadMeta | None":
        """The ``PayloadMeta`` indexed for ``edge_id``, or None.  Inline."""
        if _threads.pending:
            _threads.handoff()
        if self._reads.behind():
            await self._thread(self._reads.follow)
        return self._sync.meta(edge_id)

    async def contains(self, edge_id: Any) -> bool:
        """``edge_id in store``, awaitable.  Inline."""
        if _threads.pending:
            _threads.handoff()
        if self._reads.behind():
            await self._thread(self._reads.follow)
        return edge_id in self._sync

    def __contains__(self, edge_id: object) -> bool:
        return edge_id in self._sync

    def __len__(self) -> int:
        return len(self._sync)

    def __aiter__(self) -> Any:
        """Async iterator over the keys (fetched in worker threads); ``RuntimeError``
        if keys change meanwhile or ``compact()``/``rebuild_index()`` replaces the index."""
        return self._keys(AsyncDiskHashIndex(self._sync.index).keys())

    def keys(self) -> Any:
        """As ``__aiter__``: ``async for key in store.keys()``, like ``PayloadStore.keys()``."""
        return self.__aiter__()

    async def _keys(self, it: Any) -> Any:
        # As PayloadStore.keys(): a replaced generation's closed index is a
        # RuntimeError, not IndexClosedError on an open store.
        while True:
            try:
                key = await it.__anext__()
            except StopAsyncIteration:
                return
            except IndexClosedError:
                if self._sync.closed:
                    raise
                raise RuntimeError(self._reads.replaced_message()) from None
            yield key

    async def get_many(self, edge_ids: Any) -> "list[bytes | None]":
        """Payloads in key order: inline if the batch's stored bytes are at most
        ``INLINE_READ`` in all, else in a worker thread."""
        sync = self._sync
        limit = INLINE_READ if self._inline_read is None else self._inline_read
        if isinstance(edge_ids, (list, tuple)) and len(edge_ids) <= 16:
            if _threads.pending:
                _threads.handoff()
            if self._reads.behind():
                await self._thread(self._reads.follow)
            g = self._reads.live()
            metas = [g.index.get(k) for k in edge_ids]
            if sum(m.length for m in metas if m is not None) <= limit:
                return [None if m is None else self._reads.read(g, m) for m in metas]
        return await self._thread(sync.get_many, edge_ids)

    async def get_many_arrow(self, edge_ids: Any) -> Any:
        """As ``PayloadStore.get_many_arrow``, in a worker thread (its fill runs
        without the GIL, so the event loop goes on meanwhile)."""
        return await self._thread(self._sync.get_many_arrow, edge_ids)

    def payload_range(self, edge_id: Any) -> "tuple[int, int, int] | None":
        """As ``PayloadStore.payload_range`` (sync: an index probe)."""
        return self._sync.payload_range(edge_id)

    # -- writes -----------------------------------------------------------------------

    async def put(self, edge_id: Any, payload: Any, *, compression: Any = None) -> PayloadMeta:
        """Store ``payload`` under ``edge_id``: inline when small and nothing waits,
        else in the writer lane.  Cancelled, it completed or never started."""
        sync = self._sync
        key = key_int(edge_id)
        view = payload_view(payload)
        if len(view) <= INLINE_WRITE:
            if _threads.pending:
                _threads.handoff()
            meta = self._reads.try_put(key, view, compression)
            if meta is not None:
                return meta
        return await self._in_lane(functools.partial(sync.put, key, view, compression=compression))

    async def put_many(self, edge_ids: Any, payloads: Any, *, compression: Any = None) -> None:
        """As ``PayloadStore.put_many``.  Writer lane."""
        await self._in_lane(functools.partial(self._sync.put_many, edge_ids, payloads,
                                              compression=compression))

    async def delete(self, edge_id: Any) -> bool:
        """Remove ``edge_id``; returns whether it was there.  Writer lane."""
        return await self._in_lane(self._sync.delete, edge_id)

    async def pop(self, edge_id: Any, default: Any = _MISSING) -> Any:
        """Remove ``edge_id`` and return its payload (``default``, or ``KeyError``).  Writer lane."""
        if default is _MISSING:
            return await self._in_lane(self._sync.pop, edge_id)
        return await self._in_lane(self._sync.pop, edge_id, default)

    async def save(self) -> None:
        """Make every earlier put/delete durable.  Writer lane; runs to its end if cancelled."""
        await self._in_lane(self._sync.save)

    # -- whole-store operations -----------------------------------------------------------

    async def compact(self, *, salvage: bool = False) -> None:
        """As ``PayloadStore.compact`` in a worker thread (outside the lane, so
        puts go on meanwhile; they wait only for its final switch)."""
        await self._thread(functools.partial(self._sync.compact, salvage=salvage))

    async def rebuild_index(self, progress: "Callable[[int, int], Any] | None" = None, *,
                            salvage: bool = False) -> int:
        """As ``PayloadStore.rebuild_index``.  Writer lane; ``progress`` is called
        in the worker thread."""
        return await self._in_lane(functools.partial(self._sync.rebuild_index, salvage=salvage),
                                   progress)

    async def verify(self) -> None:
        """As ``PayloadStore.verify``.  Worker thread."""
        await self._thread(self._sync.verify)

    async def stats(self) -> StoreStats:
        """As ``PayloadStore.stats``.  Worker thread."""
        return await self._thread(self._sync.stats)

    # -- lifetime ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Save, close; idempotent.  Shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            await self._in_lane(self._sync.close)

    @property
    def closed(self) -> bool:
        return self._sync.closed

    @property
    def directory(self) -> str:
        return self._sync.directory

    @property
    def compression(self) -> Compression:
        return self._sync.compression

    @property
    def data_path(self) -> str:
        return self._sync.data_path

    @property
    def readonly(self) -> bool:
        return self._sync.readonly

    async def __aenter__(self) -> "AsyncPayloadStore":
        self._sync.__enter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncPayloadStore wrapping {self._sync!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("an AsyncPayloadStore cannot be pickled; pass its directory and open it again")
