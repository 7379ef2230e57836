"""AsyncDiskHashIndex: the DiskHashIndex API for asyncio (uvloop too) and trio, on anyio.

Scheduling is all this module adds; every rule (validation, errors, locking,
crash safety) is the core's.  Three lanes:

* inline, on the event loop: ``get``, ``contains``, ``len()``, an ``insert``
  that needs no grow (``table.try_insert``), small batch lookups.
  These never wait for another thread for longer than a few pointer stores
  (the map swap at the end of a grow), so they cost what the sync call costs;
* the writer lane: work that holds the core's writer lock or reads the whole
  table (a growing insert, ``delete``, ``pop``, ``reserve``, ``save``,
  ``stats``, ``verify``, ``repair``, ``insert_many``, large batch lookups,
  ``close``) runs in one anyio worker thread at a time; further callers wait
  on an ``anyio.Lock``, parked in the loop rather than in threads.  Keeping
  whole-table reads in the lane too means no thread of ours ever waits to
  write while a long read holds the map lock, which (the lock prefers
  writers) would make the inline readers wait as well;
* iteration fetches its records in worker threads, a few thousand slots per
  hop, holding the map lock only for 1024 slots at a time.

Cancellation never interrupts a worker thread (anyio's default
``abandon_on_cancel=False``): a cancelled call either completed or never
started, and the index is consistent either way.

One event loop at a time: anyio's lock and limiter belong to the loop that
made them, and a second loop waiting on them would hang both.  The facade
binds to the loop of its first lane or thread call and moves to another
loop only while no such call is in flight; a call from another loop meanwhile
raises ``WrongEventLoopError`` at once.  Inline calls are plain sync calls
and work from any loop.  Two loops share an index through two facades over
one sync index (``AsyncDiskHashIndex(shared.sync)``): the core is thread-safe.
"""

from __future__ import annotations

import functools
import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar, overload

import anyio
import anyio.lowlevel

from diskhash import _threads
from diskhash._index.table import DiskHashIndex, iteration_chunk, iteration_start, try_insert
from diskhash._types import IndexStats, PayloadMeta, RepairReport
from diskhash.errors import WrongEventLoopError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from diskhash._index.batch import KeyArray, MetaArray, ResultArray

__all__ = ["AsyncDiskHashIndex"]

_T = TypeVar("_T")
_I = TypeVar("_I")
_MISSING: Any = object()

#: Batch lookups of at most this many keys run inline (their cost: docs/performance.md).
INLINE_BATCH = 4096
#: Slots an iteration step copies per worker-thread hop (16 core chunks).
ITER_STEP_SLOTS = 16 * 1024
#: Worker threads one index may occupy at once (iterations plus the writer lane).
THREADS_PER_INDEX = 4


def _fetch(sync: DiskHashIndex, start: int, what: int, generation: int,
           num_slots: int) -> tuple[list[Any], int]:
    """Worker-thread side of iteration: copy up to ITER_STEP_SLOTS slots' records."""
    items: list[Any] = []
    end = min(num_slots, start + ITER_STEP_SLOTS)
    while start < end:
        chunk = iteration_chunk(sync, start, what, generation)
        items.extend(chunk.items)
        start = chunk.next_slot
    return items, start


class _AsyncIterator(Generic[_I]):
    """Records in slot order, fetched in worker threads; ``RuntimeError`` if the
    set of keys changes meanwhile (the sync iterators' rule)."""

    def __init__(self, owner: "AsyncDiskHashIndex", what: int) -> None:
        self._owner = owner
        self._what = what
        self._buffer: list[Any] = []
        self._pos = 0
        self._start: int | None = None
        self._generation = 0
        self._num_slots = 0

    def __aiter__(self) -> "_AsyncIterator[_I]":
        return self

    async def __anext__(self) -> _I:
        while self._pos >= len(self._buffer):
            sync = self._owner.sync
            if self._start is None:
                self._generation, self._num_slots = iteration_start(sync)
                self._start = 0
            if self._start >= self._num_slots:
                raise StopAsyncIteration
            self._buffer, self._start = await self._owner._thread(
                _fetch, sync, self._start, self._what, self._generation, self._num_slots)
            self._pos = 0
        # The buffer is copied ahead: a key deleted (or the index closed)
        # meanwhile must not be yielded (the sync iterators' rule).
        sync = self._owner.sync
        if iteration_start(sync)[0] != self._generation:
            raise RuntimeError(f"{sync.path}: index changed size during iteration")
        item: _I = self._buffer[self._pos]
        self._pos += 1
        return item


class AsyncDiskHashIndex:
    """``DiskHashIndex`` for async code: ``await AsyncDiskHashIndex.open(path, ...)``.

    Mirrors the sync class method for method (same names, arguments and
    errors); the wrapped index is ``.sync``.  Subscripts and ``in`` have no
    async form: use ``get``/``pop``/``delete`` and ``await contains(key)``.

    Inline calls do not yield to the loop (no checkpoint): a task that loops
    over millions of them should ``await anyio.sleep(0)`` now and then.
    Calls from different tasks are not ordered among themselves; one task's
    awaited calls happen in order.
    """

    def __init__(self, sync: DiskHashIndex) -> None:
        """Wrap an open ``DiskHashIndex`` (``open()`` is the usual way in).

        ``sync``: the index to share; both objects then use the same table,
        locks and file, and closing either closes both.  Raises ``TypeError``
        if ``sync`` is not a ``DiskHashIndex``.
        """
        if not isinstance(sync, DiskHashIndex):
            raise TypeError(f"AsyncDiskHashIndex wraps a DiskHashIndex, got {type(sync).__name__}")
        self._sync = sync
        # The loop binding (see the module docstring): the loop's token, its
        # lane lock and thread limiter, and how many calls are using them.
        # _guard is held for a few statements, never across an await.
        self._guard = threading.Lock()
        self._loop: anyio.lowlevel.EventLoopToken | None = None
        self._lane: anyio.Lock | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._in_flight = 0

    @classmethod
    async def open(
        cls,
        path: "str | os.PathLike[str]",
        *,
        readonly: bool = False,
        capacity: int | None = None,
        timeout: float | None = 0.0,
        resident: "bool | int | None" = None,
    ) -> "AsyncDiskHashIndex":
        """Open (or create) the index at ``path`` in a worker thread.

        Opening can scan the table (after an unclean close) or wait for
        another process's lock, so it never runs on the event loop.

        Parameters, as for ``DiskHashIndex``: ``path`` (created with its
        parent directories unless ``readonly``); ``readonly`` (never write the
        index file); ``capacity`` (entries that fit before the first grow);
        ``timeout`` (seconds to wait for a conflicting lock, ``None`` forever);
        ``resident`` (keep the table in memory: True or a budget in bytes).

        Returns the open ``AsyncDiskHashIndex``.  Raises ``IndexLockedError``
        (another process or index object holds a conflicting lock),
        ``CorruptIndexError`` (the header breaks the format), ``ValueError``
        (a negative ``capacity`` or ``timeout``, or ``capacity`` with
        ``readonly``) and ``OSError`` (the file cannot be opened or created).

        A cancelled open either returned the index or opened nothing; with
        ``timeout=None`` it cannot be cancelled while it waits for another
        process's lock.
        """
        opener = functools.partial(_open_counted, path, readonly=readonly,
                                   capacity=capacity, timeout=timeout, resident=resident)
        return cls(await _threads.run_sync(opener))

    @property
    def sync(self) -> DiskHashIndex:
        """The wrapped synchronous ``DiskHashIndex`` (shares state, locks and file).

        For code that needs a call the facade does not offer, from a worker
        thread of its own.
        """
        return self._sync

    # -- scheduling --------------------------------------------------------------

    def _bind(self) -> tuple[anyio.Lock, anyio.CapacityLimiter]:
        """Count a call in flight on the current loop and return that loop's
        lane and limiter; ``WrongEventLoopError`` if another loop is busy."""
        loop = anyio.lowlevel.current_token()
        with self._guard:
            if self._lane is None or self._limiter is None or loop != self._loop:
                if self._in_flight:
                    raise WrongEventLoopError(
                        f"{self._sync.path}: this AsyncDiskHashIndex is in use by another "
                        "event loop (anyio locks belong to one loop; waiting on them from "
                        "two would hang both): give each loop its own facade, "
                        "AsyncDiskHashIndex(index.sync), or let the other loop's calls "
                        "finish first")
                self._loop = loop
                self._lane = anyio.Lock()
                self._limiter = anyio.CapacityLimiter(THREADS_PER_INDEX)
            self._in_flight += 1
            return self._lane, self._limiter

    def _unbind(self) -> None:
        with self._guard:
            self._in_flight -= 1

    async def _thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        _, limiter = self._bind()
        try:
            return await _threads.run_sync(fn, *args, limiter=limiter)
        finally:
            self._unbind()

    async def _in_lane(self, fn: Callable[..., _T], *args: Any) -> _T:
        lane, limiter = self._bind()
        try:
            async with lane:
                return await _threads.run_sync(fn, *args, limiter=limiter)
        finally:
            self._unbind()

    # -- reads (inline) ----------------------------------------------------------

    @overload
    async def get(self, key: Any) -> PayloadMeta | None: ...
    @overload
    async def get(self, key: Any, default: _T) -> PayloadMeta | _T: ...

    async def get(self, key: Any, default: Any = None) -> Any:
        """The ``PayloadMeta`` stored for ``key``, or ``default`` if absent.

        ``key``: an int in ``[0, 2**128)`` or a ``uuid.UUID``.  Runs inline on
        the event loop (a probe costs less than a thread hop would).  Raises
        ``TypeError`` (not an integer, or a ``bool``), ``KeyRangeError`` (out
        of range), ``CorruptIndexError`` (the probe met a damaged slot) and
        ``IndexClosedError`` (after ``close()``).
        """
        if _threads.pending:
            _threads.handoff()
        return self._sync.get(key, default)

    async def contains(self, key: Any) -> bool:
        """Whether ``key`` is stored: the awaitable form of ``key in index``.

        ``key`` and the errors as for ``get``.  Runs inline.  (``in`` itself
        raises ``TypeError`` on the async index, so a missing ``await`` cannot
        pass silently.)
        """
        if _threads.pending:
            _threads.handoff()
        return key in self._sync

    def __contains__(self, key: object) -> bool:
        raise TypeError("use 'await index.contains(key)' on an AsyncDiskHashIndex")

    def __len__(self) -> int:
        """The entry count (inline; ``IndexClosedError`` after ``close()``)."""
        return len(self._sync)

    def keys(self) -> _AsyncIterator[int]:
        """An async iterator over the keys (ints), in slot order.

        Records are copied in worker threads, a few thousand slots per hop.
        Its next step raises ``RuntimeError`` if keys were added or removed
        since it started (overwrites are fine) and ``IndexClosedError`` once
        the index is closed.
        """
        return _AsyncIterator(self, 0)

    def values(self) -> _AsyncIterator[PayloadMeta]:
        """An async iterator over the ``PayloadMeta`` records, in slot order.

        Errors as for ``keys()``.
        """
        return _AsyncIterator(self, 1)

    def items(self) -> _AsyncIterator[tuple[int, PayloadMeta]]:
        """An async iterator over ``(key, PayloadMeta)`` pairs, in slot order.

        Errors as for ``keys()``.
        """
        return _AsyncIterator(self, 2)

    def __aiter__(self) -> _AsyncIterator[int]:
        return _AsyncIterator(self, 0)

    # -- writes ------------------------------------------------------------------

    async def insert(self, key: Any, meta: Any) -> None:
        """Store ``meta`` under ``key``, overwriting a present key.

        ``key``: an int in ``[0, 2**128)`` or a ``uuid.UUID``; ``meta``: a
        ``PayloadMeta`` (or a 5-tuple) whose ``edge_id`` equals ``key``.
        Returns ``None``; the write is durable after ``save()``.

        Runs inline, or in the writer lane if the table must grow or another
        writer holds the lock, so the loop never waits for a grow.  Cancelled,
        it either completed or never started.

        Raises ``ValueError`` (``meta.edge_id`` differs from ``key``, or an
        unknown compression), ``TypeError``/``OverflowError`` (a bad key or
        field), ``ReadOnlyIndexError`` (a read-only index), ``OSError`` (a
        grow failed: the index is unchanged), ``CorruptIndexError`` and
        ``IndexClosedError``.
        """
        sync = self._sync
        if _threads.pending:
            _threads.handoff()
        if try_insert(sync, key, meta):
            return
        lane, limiter = self._bind()
        try:
            async with lane:
                if try_insert(sync, key, meta):     # the writer before us made room
                    return
                await _threads.run_sync(sync.insert, key, meta, limiter=limiter)
        finally:
            self._unbind()

    async def delete(self, key: Any) -> bool:
        """Remove ``key``; returns ``True`` if it was present, ``False`` if not.

        Runs in the writer lane (a backward-shift delete may move a run of
        entries).  Raises as ``insert`` does for a bad key, a read-only or a
        closed index.
        """
        return await self._in_lane(self._sync.delete, key)

    @overload
    async def pop(self, key: Any) -> PayloadMeta: ...
    @overload
    async def pop(self, key: Any, default: _T) -> PayloadMeta | _T: ...

    async def pop(self, key: Any, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its ``PayloadMeta``.

        If ``key`` is absent, returns ``default`` when one is given and raises
        ``KeyError`` otherwise.  Runs in the writer lane; other errors as for
        ``delete``.
        """
        if default is _MISSING:
            return await self._in_lane(self._sync.pop, key)
        return await self._in_lane(self._sync.pop, key, default)

    async def reserve(self, capacity: int) -> None:
        """Grow now, if needed, so ``capacity`` entries fit without another grow.

        ``capacity``: a number of entries (>= 0).  Returns ``None``.  Runs in
        the writer lane.  Raises ``ValueError`` (negative), ``OSError`` (the
        grow failed: the index is unchanged), ``ReadOnlyIndexError`` and
        ``IndexClosedError``.
        """
        await self._in_lane(self._sync.reserve, capacity)

    async def save(self) -> None:
        """Make every write before this call durable (msync of the whole map).

        Returns ``None`` once those writes survive a kernel crash or a power
        loss.  Runs in the writer lane; cancelled, the flush still runs to its
        end in its thread.  Raises ``OSError`` (the msync failed),
        ``ReadOnlyIndexError`` and ``IndexClosedError``.
        """
        await self._in_lane(self._sync.save)

    # -- batches -----------------------------------------------------------------

    async def get_many(self, keys: KeyArray) -> ResultArray:
        """Look up a batch of keys (see ``DiskHashIndex.get_many``).

        ``keys``: a 1-D array of unsigned ints (ids < 2**64), of
        ``KEY_DTYPE``, or a list.  Returns a ``RESULT_DTYPE`` array, one row
        per key (``found`` False and zeros for an absent key).  Inline up to
        ``INLINE_BATCH`` keys, else in the writer lane.  Raises
        ``TypeError``/``ValueError``/``OverflowError`` (bad keys),
        ``ImportError`` (numpy missing), ``CorruptIndexError`` and
        ``IndexClosedError``.
        """
        if _small(keys):
            if _threads.pending:
                _threads.handoff()
            return self._sync.get_many(keys)
        return await self._in_lane(self._sync.get_many, keys)

    async def contains_many(self, keys: KeyArray) -> NDArray[np.bool_]:
        """Which of ``keys`` are stored: a ``bool`` array, one entry per key.

        ``keys`` and errors as for ``get_many``.  Inline up to
        ``INLINE_BATCH`` keys, else in the writer lane.
        """
        if _small(keys):
            if _threads.pending:
                _threads.handoff()
            return self._sync.contains_many(keys)
        return await self._in_lane(self._sync.contains_many, keys)

    async def insert_many(self, keys: KeyArray, records: MetaArray) -> None:
        """Insert ``records[i]`` under ``keys[i]``, in order (see ``DiskHashIndex.insert_many``).

        ``keys`` as for ``get_many``; ``records``: a ``META_DTYPE`` array, as
        many as keys.  Returns ``None``.  The whole batch is validated before
        the first write, so a bad batch changes nothing.  Runs in the writer
        lane.  Raises ``TypeError``/``ValueError``/``OverflowError`` (a bad
        batch), ``OSError`` (the grow it needed failed: nothing inserted),
        ``ReadOnlyIndexError``, ``CorruptIndexError`` and ``IndexClosedError``.
        """
        await self._in_lane(self._sync.insert_many, keys, records)

    # -- whole-table operations --------------------------------------------------

    async def stats(self) -> IndexStats:
        """The table's shape: ``IndexStats(entries, slots, load_factor,
        file_bytes, longest_probe, mean_probe)``.

        Walks the whole table, so it runs in the writer lane.  Raises
        ``IndexClosedError``.
        """
        return await self._in_lane(self._sync.stats)

    async def set_resident(self, resident: "bool | int | None") -> None:
        """Keep the table map in memory, or stop (see ``DiskHashIndex.set_resident``).

        Locking a table not yet cached reads all of it: runs in the writer
        lane.  ``TypeError``/``ValueError`` for a bad ``resident``.
        """
        await self._in_lane(self._sync.set_resident, resident)

    async def verify(self) -> None:
        """Check the whole table; returns ``None`` if it is sound.

        Raises ``CorruptIndexError`` whose ``.defects`` lists every defect
        found (see ``DiskHashIndex.verify``), and ``IndexClosedError``.  Runs
        in the writer lane.
        """
        await self._in_lane(self._sync.verify)

    async def repair(self) -> RepairReport:
        """Rebuild a valid table from every readable entry (see ``DiskHashIndex.repair``).

        Returns ``RepairReport(kept, dropped, slots)``, ``dropped`` listing
        ``(slot, reason)`` for each entry it could not keep.  Runs in the
        writer lane.  Raises ``OSError`` (the new file could not be written:
        the index is unchanged), ``ReadOnlyIndexError`` and
        ``IndexClosedError``.
        """
        return await self._in_lane(self._sync.repair)

    # -- lifetime ----------------------------------------------------------------

    async def close(self) -> None:
        """Flush (if writable), record a clean close, unmap, unlock.

        Returns ``None``; idempotent.  Shielded from cancellation, so
        ``async with`` closes even in a cancelled task.  Calls queued before
        it run first; anything after it (inline calls, iterators' next steps,
        queued writers) gets ``IndexClosedError``.
        """
        with anyio.CancelScope(shield=True):
            await self._in_lane(self._sync.close)

    @property
    def closed(self) -> bool:
        """Whether the index was closed (or inherited across ``fork()``)."""
        return self._sync.closed

    @property
    def path(self) -> str:
        """The index file's absolute path."""
        return self._sync.path

    @property
    def readonly(self) -> bool:
        """Whether the index was opened with ``readonly=True``."""
        return self._sync.readonly

    @property
    def exclusive(self) -> bool:
        """Whether the index was opened with ``exclusive=True`` (the only open)."""
        return self._sync.exclusive

    @property
    def resident(self) -> "str | None":
        """What ``resident=`` did: ``"locked"``, ``"prefetched"`` or ``None``."""
        return self._sync.resident

    @property
    def shared(self) -> bool:
        """Whether other processes may have the index open at the same time."""
        return self._sync.shared

    @property
    def recovery(self) -> RepairReport | None:
        """What the open healed after an unclean close (a ``RepairReport``), or ``None``."""
        return self._sync.recovery

    @property
    def num_slots(self) -> int:
        """The table's slot count (a power of two)."""
        return self._sync.num_slots

    @property
    def capacity(self) -> int:
        """Entries that fit before the next grow."""
        return self._sync.capacity

    @property
    def seed(self) -> int:
        """The file's hash seed."""
        return self._sync.seed

    async def __aenter__(self) -> "AsyncDiskHashIndex":
        self._sync.__enter__()          # IndexClosedError if closed
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncDiskHashIndex wrapping {self._sync!r}>"

    def __reduce__(self) -> Any:
        raise TypeError("an AsyncDiskHashIndex cannot be pickled; pass its path and open it again")


def _open_counted(path: Any, **kwargs: Any) -> DiskHashIndex:
    """Open, and take the entry count now: on a read-only open after an
    unclean close, ``len()`` would otherwise scan the table on the loop."""
    idx = DiskHashIndex(path, **kwargs)
    try:
        len(idx)
    except BaseException:
        idx.close()
        raise
    return idx


def _small(keys: Any) -> bool:
    try:
        return len(keys) <= INLINE_BATCH
    except TypeError:
        return False
