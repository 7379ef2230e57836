"""Stubs for the compiled DiskHashIndex (diskhash/_index/table.pyx).

The docstrings here complete the compiled module's for editors and readers:
each names its parameters, what it returns and what it raises.  Errors every
call shares are not repeated: ``IndexClosedError`` after ``close()`` (or in a
child after ``fork()``); for a key, ``TypeError`` (not an integer, or a
``bool``) and ``KeyRangeError`` (outside ``[0, 2**128)``: a ``ValueError``
and an ``OverflowError``); for a write,
``ReadOnlyIndexError`` on a ``readonly=True`` index; ``CorruptIndexError``
when a probe meets a damaged slot.
"""

import os
import uuid
from types import TracebackType
from typing import Any, Iterator, Literal, SupportsIndex, TypeVar, overload

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

from diskhash._index.batch import KeyArray, MetaArray, ResultArray
from diskhash._types import Compression, IndexStats, PayloadMeta, RepairReport

_T = TypeVar("_T")
_Key = int | uuid.UUID | SupportsIndex
_Record = PayloadMeta | tuple[_Key, SupportsIndex, SupportsIndex, Compression | SupportsIndex, SupportsIndex]
_StrPath = str | os.PathLike[str]

MAX_SLOTS: int
MAX_CAPACITY: int

# Benchmark knobs for a grow (docs/performance.md), not public API.
GROW_KNOB_NAMES: tuple[str, ...]
DEFAULT_GROW_KNOBS: str
GROW_SLICE_SLOTS: int
GROW_PAUSE_US: int
_GROW_KNOBS: str

def resident_budget(value: bool | int | None, name: str = ...) -> int | None:
    """``resident=`` checked: None (off) or a budget in bytes (True: no limit)."""
def drop_pages(index: DiskHashIndex) -> None:
    """Let go of this process's mapping of the table's pages (they stay in the page cache)."""

@disjoint_base
class DiskHashIndex:
    """A persistent map from 128-bit edge ids to ``PayloadMeta`` records,
    stored in a memory-mapped SOCHIDX2 file.  Thread-safe: any number of
    threads may read while one writes.  Use it as a context manager, or call
    ``close()``."""

    path: str
    """The index file's absolute path."""
    readonly: bool
    """Whether the index was opened with ``readonly=True``."""
    recovery: RepairReport | None
    """What a writable open healed after an unclean close, or ``None``."""
    exclusive: bool
    """Whether the index was opened with ``exclusive=True`` (the only open of it)."""
    resident: Literal["locked", "prefetched"] | None
    """What ``resident=`` did to the current map: ``"locked"`` (mlock),
    ``"prefetched"`` (mlock refused: MADV_WILLNEED), or ``None`` (off, over
    budget, or closed)."""
    def __init__(
        self,
        path: _StrPath,
        *,
        readonly: bool = ...,
        capacity: int | None = ...,
        timeout: float | None = ...,
        exclusive: bool = ...,
        resident: bool | int | None = ...,
    ) -> None:
        """Open the index file at ``path``, creating it (and its parent
        directories) unless ``readonly``.

        ``readonly``: never write the index file (works on a read-only file);
        ``capacity``: entries that fit before the first grow (writable only);
        ``timeout``: seconds to wait for a conflicting lock held by another
        process or index object (``None``: forever);
        ``exclusive``: be the only open of the index (no other process or
        object, reader or writer); by default any number of processes open
        it at once, writes taking turns (docs/guide/processes.md);
        ``resident``: keep the table in memory (True, or a budget in bytes
        the table file must fit; again after every grow or re-map), so that
        a lookup in an index the page cache cannot hold reads no device page
        (docs/guide/hash-index.md).

        Raises ``IndexLockedError`` (an ``exclusive=True`` open holds it, or
        this one is exclusive and another open exists), ``CorruptIndexError`` (the header breaks the
        format), ``ValueError`` (a negative ``capacity`` or ``timeout``, or
        ``capacity`` with ``readonly``) and ``OSError`` (the file cannot be
        opened or created; nothing is left behind).
        """
    def set_resident(self, resident: bool | int | None) -> None:
        """Keep the table map in memory, or stop; as ``resident=``."""
    @overload
    def get(self, key: _Key) -> PayloadMeta | None: ...
    @overload
    def get(self, key: _Key, default: _T) -> PayloadMeta | _T:
        """The ``PayloadMeta`` stored for ``key`` (an int in ``[0, 2**128)``
        or a ``uuid.UUID``), or ``default`` (``None`` unless given) if absent."""
    def __getitem__(self, key: _Key, /) -> PayloadMeta:
        """The ``PayloadMeta`` stored for ``key``; ``KeyError`` if absent."""
    def __contains__(self, key: object, /) -> bool:
        """Whether ``key`` is stored."""
    def __len__(self) -> int:
        """The entry count (a read-only open after an unclean close counts once)."""
    def __iter__(self) -> Iterator[int]:
        """The keys, as ``keys()``."""
    def keys(self) -> Iterator[int]:
        """A lazy iterator over the keys (ints), in slot order.

        Its next step raises ``RuntimeError`` if keys were added or removed
        since it started (overwrites are fine), like a dict's.
        """
    def values(self) -> Iterator[PayloadMeta]:
        """A lazy iterator over the records, in slot order (``RuntimeError`` as ``keys()``)."""
    def items(self) -> Iterator[tuple[int, PayloadMeta]]:
        """A lazy iterator over ``(key, PayloadMeta)`` pairs, in slot order
        (``RuntimeError`` as ``keys()``)."""
    def insert(self, key: _Key, meta: _Record) -> None:
        """Store ``meta`` under ``key``, overwriting a present key; grows the
        table first if a new key needs room.

        ``meta``: a ``PayloadMeta`` or a 5-tuple whose ``edge_id`` equals
        ``key``.  Durable after ``save()``; a process crash loses nothing once
        it returned.  Raises ``ValueError`` (``meta.edge_id`` differs from
        ``key``, or an unknown compression), ``TypeError``/``OverflowError``
        (a bad field) and ``OSError`` (a grow failed: the index is unchanged).
        """
    def delete(self, key: _Key) -> bool:
        """Remove ``key``; returns ``True`` if it was present, ``False`` if not.

        Backward-shift deletion: the entries after it in its run move back,
        so the file needs no tombstones and stays valid for any reader.
        """
    def __delitem__(self, key: _Key, /) -> None:
        """Remove ``key``; ``KeyError`` if absent."""
    @overload
    def pop(self, key: _Key) -> PayloadMeta: ...
    @overload
    def pop(self, key: _Key, default: _T) -> PayloadMeta | _T:
        """Remove ``key`` and return its record; if absent, return ``default``
        when given, else raise ``KeyError``."""
    def reserve(self, capacity: int) -> None:
        """Grow now, if needed, so ``capacity`` entries fit without another grow.

        Raises ``ValueError`` (negative) and ``OSError`` (the grow failed:
        the index is unchanged).
        """
    def save(self) -> None:
        """Make every write before this call durable (msync of the whole map):
        they then survive a kernel crash and a power loss.  Raises ``OSError``
        if the msync fails."""
    def get_many(self, keys: KeyArray) -> ResultArray:
        """Look up a batch: returns a ``RESULT_DTYPE`` array, one row per key
        (``found`` False and zeros for an absent key).

        ``keys``: a 1-D array (or list) of unsigned ints, of signed ints with
        no negative value, or of ``KEY_DTYPE``.  Raises ``TypeError`` (another
        dtype), ``KeyRangeError`` (a negative key), ``ValueError`` (not 1-D)
        and ``ImportError`` (numpy is not installed).  The GIL is released
        for the whole batch.
        """
    def contains_many(self, keys: KeyArray) -> NDArray[np.bool_]:
        """Which of ``keys`` are stored: a ``bool`` array (``keys`` and errors
        as for ``get_many``)."""
    def insert_many(self, keys: KeyArray, records: MetaArray) -> None:
        """Insert ``records[i]`` under ``keys[i]``, in order; a repeated key
        ends with its last record.

        ``keys`` as for ``get_many``; ``records``: a ``META_DTYPE`` array, as
        many as keys.  The whole batch is validated first, so a bad batch
        raises (``TypeError``, ``ValueError``, ``OverflowError``) and changes
        nothing; a grow it needs happens once, before the first write, and if
        it fails (``OSError``) nothing is inserted.
        """
    def verify(self) -> None:
        """Check the whole table (O(slots)); returns ``None`` if it is sound.

        Raises ``CorruptIndexError`` whose ``.defects`` lists every defect:
        bad tags or compression bytes, nonzero reserved bytes, keys
        unreachable from their home slot, duplicates, a wrong header count,
        no empty slot, a zero seed.
        """
    def stats(self) -> IndexStats:
        """``IndexStats(entries, slots, load_factor, file_bytes,
        longest_probe, mean_probe)``; walks the whole table."""
    def repair(self) -> RepairReport:
        """Rebuild a valid table from every readable entry and publish it
        atomically, as a grow does.

        Returns ``RepairReport(kept, dropped, slots)``, ``dropped`` listing
        ``(slot, reason)`` for each entry with a bad tag or compression byte.
        Raises ``OSError`` if the new file cannot be written (the index is
        unchanged).
        """
    def close(self) -> None:
        """Flush (if writable), record a clean close, unmap, unlock.

        Idempotent; other threads' later calls raise ``IndexClosedError``.
        """
    @property
    def closed(self) -> bool:
        """Whether the index was closed (or inherited across ``fork()``)."""
    @property
    def shared(self) -> bool:
        """Whether other processes may have the index open at the same time."""
    def writing(self) -> _Writing:
        """A context manager holding the writer lock, across processes too,
        for several calls (re-entrant in the thread that holds it)."""
    @property
    def num_slots(self) -> int:
        """The table's slot count (a power of two)."""
    @property
    def seed(self) -> int:
        """The file's hash seed (nonzero)."""
    @property
    def capacity(self) -> int:
        """Entries that fit before the next grow."""
    def __enter__(self) -> "DiskHashIndex": ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

# The index's internal interface, for the store and the async index (not public API).
def try_insert(index: DiskHashIndex, key: _Key, meta: _Record) -> bool:
    """Insert only if that cannot block; False (nothing done) if a writer or
    a long read holds a lock, or the insert would have to grow the table."""
def close_unsynced(index: DiskHashIndex) -> None:
    """``close()`` without the msync (process-crash safe only)."""
def iteration_start(index: DiskHashIndex) -> tuple[int, int]:
    """``(generation, num_slots)`` for a new iteration."""
def iteration_chunk(index: DiskHashIndex, start: int, what: int, generation: int) -> Any:
    """One iteration step: the records of up to a chunk of slots from ``start``."""

def repair(path: _StrPath) -> RepairReport:
    """Open the index at ``path`` for writing, ``repair()`` it and close it.

    Returns the ``RepairReport``; raises what the open and ``repair()`` raise.
    """


@disjoint_base
class _Writing:
    def __enter__(self) -> DiskHashIndex: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
