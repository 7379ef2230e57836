"""PayloadStore: the payloads themselves, in a framed append-only data file the index points into.

A store is a directory::

    MANIFEST              which generation of each file is current (atomic rename)
    data-000001.dat       the log: a header, then framed records (docs/internals/store-format.md)
    index-000001.idx      a SOCHIDX2 index: edge id -> PayloadMeta into the data file
    index-000001.idx.lock the index's own lock / clean marker (diskhash core)
    store.lock            one writer or many readers per store (flock)

A put appends a frame to the data file, then indexes it; reads look the key
up in the index and read (and check) the frame.  ``save()`` makes the data
durable before the index and then records the checkpoint (the log offset the
index covers) in the data file header; a writable open replays the log after
the checkpoint, cutting a torn tail.  ``compact()`` and ``rebuild_index()``
write new generations and switch to them by renaming a new MANIFEST into
place.  See docs/internals/design.md for the design and its reasons.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Sequence

from diskhash._format import payload as fmt
from diskhash._index.table import DiskHashIndex, resident_budget
from diskhash._store import arrow as _arrow
from diskhash._store import codecs as _codecs
from diskhash._store.generation import Generation, keep_resident
from diskhash._store.keys import (
    SYNC_POLICIES,
    check_flag,
    check_timeout,
    key_int,
    key_list,
    key_pairs,
    payload_list,
    payload_view,
    sync_interval,
)
from diskhash._store.lifetime import Lifetime
from diskhash._store.maintenance import StoreStats, rebuild_index, stats_of, verify_generation
from diskhash._store.reader import BIG_READ, StoreReader, iter_keys, replaced_message
from diskhash._store.recovery import open_store
from diskhash._store.sharing import moved_on
from diskhash._store.write import Holding
from diskhash._store.writer import Writer
from diskhash._types import Compression, PayloadMeta, SalvageReport, StoreRecovery
from diskhash.errors import IndexClosedError

__all__ = ["PayloadStore", "StoreStats", "SYNC_POLICIES", "InlineReads", "FOLLOW", "BatchReads", "closed_error",
           "put_many_packed"]


_MISSING: Any = object()


class PayloadStore:
    """Payload bytes by edge id: a framed, checksummed, compressed log plus its index.

    ``PayloadStore(directory, *, readonly=False, compression=Compression.NONE,
    timeout=0.0, verify_checksums=True, sync="save")``

    * ``directory`` (str or path): created with its parents unless ``readonly``.
    * ``readonly``: never writes a byte; many readers per store, or one writer
      (across processes: ``IndexLockedError``).
    * ``compression``: the default codec of ``put``/``put_many``.
    * ``timeout``: seconds to wait for another process's lock (None: forever).
    * ``verify_checksums``: check each read's checksum (default; a failed check
      raises ``CorruptPayloadError``, wrong bytes are never returned).
    * ``sync``: when data reaches the disk — ``"save"`` (at ``save()`` and
      ``close()``), a number of milliseconds (a background ``save()`` that
      often while there are unsaved writes, like Bitcask's
      ``{seconds, N}``), or ``"never"`` (``save()`` and ``close()`` record
      the checkpoint but never fsync: safe against a process crash, not
      against power loss).
    * ``salvage``: a writable open that has to rebuild the index from a log
      holding damaged records whose key has no later record drops those keys
      (``last_salvage``) instead of raising ``DamagedRecordsError``.
    * ``resident_index``: True, or a budget in bytes, keeps the index file
      in memory while it fits (mlock; MADV_WILLNEED where mlock is refused),
      again after every grow, compaction or switch, so that a get from a
      store bigger than memory reads one device page, not two
      (``index.resident`` tells what was done; docs/guide/store.md).

    Raises ``OSError`` for the file system, ``IndexLockedError`` if another
    writer holds the store, ``CorruptPayloadError`` for a damaged data file
    or manifest, ``CorruptIndexError`` for a damaged index on a read-only
    open (a writable open rebuilds it from the data file).
    """

    def __init__(
        self,
        directory: "str | os.PathLike[str]",
        *,
        readonly: bool = False,
        compression: Any = Compression.NONE,
        timeout: "float | None" = 0.0,
        verify_checksums: bool = True,
        sync: Any = "save",
        salvage: bool = False,
        resident_index: "bool | int | None" = None,
    ) -> None:
        directory = os.fspath(directory)
        if not isinstance(directory, str):
            raise TypeError(f"directory must be a str path, not {type(directory).__name__}")
        if not directory:
            raise ValueError("directory must not be empty")
        check_flag("readonly", readonly)
        check_flag("verify_checksums", verify_checksums)
        check_flag("salvage", salvage)
        timeout = check_timeout(timeout)
        resident = resident_budget(resident_index, "resident_index")
        self._compression = _codecs.require(compression)
        self._sync_every = sync_interval(sync)
        self._sync = sync
        self._readonly = readonly
        self._verify = verify_checksums
        #: What the last compact() measured (seconds, puts_waited_seconds, bytes).
        self.last_compaction: "dict[str, Any] | None" = None
        self._dir, lock, page, opened = open_store(directory, readonly=readonly, timeout=timeout,
                                                   fsync=sync != "never", salvage=salvage)
        self._directory = self._dir.directory
        self._reader = StoreReader(self._directory, verify_checksums)
        #: store.lock and its shared page, the maintenance lock, the sync thread and the fork mark.
        self._life = life = Lifetime(self._directory, lock, page)
        self._writer = Writer(compression=self._compression, fsync=sync != "never", readonly=readonly,
                              directory=self._directory, closed_error=life.closed_error,
                              files=self._dir, page=page)
        self._writer.resident_index = resident
        keep_resident(opened.gen, resident)
        self._writer.opened(opened.gen, opened.end, opened.checkpoint, opened.seen)
        #: What the writable open recovered (``StoreRecovery``), or None when
        #: the store was closed cleanly.
        self.recovery: "StoreRecovery | None" = opened.recovery
        #: What the last compact() or rebuild_index() (or a ``salvage=True`` open
        #: that had to rebuild) passed over or dropped (a SalvageReport), or None.
        self.last_salvage: "SalvageReport | None" = opened.salvage
        life.opened(self._writer, self._sync_every)
        if not readonly and page is not None:
            try:
                with self._writer.nowait():
                    pass            # (a writer that died holding the lock is recovered now;
                                    # a live one is not waited for)
            except BaseException:
                self.close()
                raise

    def _write_manifest(self, data_gen: int, index_gen: int) -> None:
        self._life.check_not_forked()   # (a fork from a progress callback: the commit is the parent's)
        self._dir.write_manifest(data_gen, index_gen)

    # -- state -----------------------------------------------------------------------

    def _live(self) -> Generation:
        return self._writer.current()

    @property
    def directory(self) -> str:
        """The store's directory (resolved: symlinks followed)."""
        return self._directory

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def closed(self) -> bool:
        return self._writer.gen is None

    @property
    def compression(self) -> Compression:
        """The default codec of put/put_many."""
        return self._compression

    @property
    def index(self) -> DiskHashIndex:
        """The current index (read it, do not write it: the store keeps it in step with the log)."""
        return self._live().index

    @property
    def data_path(self) -> str:
        """The current data file's path."""
        return self._live().data_path

    # -- reads -------------------------------------------------------------------------

    def get(self, edge_id: Any, default: Any = None) -> Any:
        """The payload stored under ``edge_id`` (decompressed), or ``default``.

        Raises ``CorruptPayloadError`` (edge id, file, offset) if the record
        fails its checks, never returning wrong bytes; ``TypeError``/
        ``ValueError`` for a bad key; ``IndexClosedError`` once closed.
        """
        g = self._writer.gen
        if g is not None:
            reader = g.reader
            if reader is not None:          # one compiled call: probe, check, copy
                got = reader.get(edge_id, self._verify, BIG_READ)
                if type(got) is bytes:
                    return got
                if got is None:
                    return default
        return self._reader.get_slow(self._live(), edge_id, default)

    def __getitem__(self, edge_id: Any) -> bytes:
        got = self.get(edge_id, _MISSING)
        if got is _MISSING:
            raise KeyError(edge_id)
        return got  # type: ignore[no-any-return]

    def meta(self, edge_id: Any) -> "PayloadMeta | None":
        """The ``PayloadMeta`` indexed for ``edge_id`` (where its stored bytes are), or None."""
        return self._live().index.get(edge_id)

    def __contains__(self, edge_id: object) -> bool:
        return edge_id in self._live().index

    def __len__(self) -> int:
        return len(self._live().index)

    def __iter__(self) -> Iterator[int]:
        """The keys (ints), in index slot order; ``RuntimeError`` if keys change
        meanwhile or ``compact()``/``rebuild_index()`` replaces the index."""
        return self.keys()

    def keys(self) -> Iterator[int]:
        return iter_keys(iter(self._live().index), lambda: self._writer.gen, self._directory)

    def get_many(self, edge_ids: Iterable[Any]) -> "list[bytes | None]":
        """The payloads of ``edge_ids``, in their order (None where absent).

        One compiled loop probes the index, checks and copies the records;
        only the unusual ones (big, remapped, damaged) go through ``get``'s
        Python path.  Errors as for ``get``.  Arrow keys are taken as
        ``get_many_arrow`` takes them.
        """
        if _arrow.is_arrow(edge_ids):
            edge_ids = _arrow.key_array(edge_ids)
        return self._reader.get_many(self._live, edge_ids)

    def payload_range(self, edge_id: Any) -> "tuple[int, int, int] | None":
        """``(fd, offset, length)`` of an uncompressed payload's bytes in the data file.

        For ``os.sendfile``/``loop.sendfile``: the fd is the store's own (do
        not close it) and stays valid until the next ``compact()``,
        ``rebuild_index()`` or ``close()``.  None if absent or compressed.
        The bytes are not checked here; ``get()`` checks them.
        """
        g = self._live()
        meta = g.index.get(edge_id)
        if meta is None or meta.compression != Compression.NONE:
            return None
        return g.fd, meta.offset, meta.length

    # -- writes --------------------------------------------------------------------------

    def put(self, edge_id: Any, payload: Any, *, compression: Any = None) -> PayloadMeta:
        """Store ``payload`` (bytes-like) under ``edge_id``; returns the ``PayloadMeta`` indexed.

        ``compression`` (default: the store's) is used only if it makes the
        payload smaller; otherwise the record is stored as NONE.  Durable at
        the next ``save()`` (or sync interval).  Raises ``TypeError`` for a
        payload that is not bytes-like or a bad key, ``ValueError`` for one
        over 4 GiB - 1 (before anything is written), ``ReadOnlyIndexError``,
        ``OSError`` (disk full: nothing is stored).
        """
        if (type(payload) is bytes and compression is None and not self._compression
                and not self._readonly and len(payload) <= fmt.MAX_LENGTH):
            # (read-only, closed and oversized calls take the path below, which
            # reports a bad key first, as it always has)
            if type(edge_id) is not int:
                # Before the writer lock: a key's __index__ is Python code, which
                # may put to this store (the lock is reentrant) and must not do
                # so between put_frame's reading the log's end and its write.
                edge_id = key_int(edge_id)
            meta = self._writer.put_bytes(edge_id, payload)
            if meta is not None:
                return meta
        key = key_int(edge_id)
        view = payload_view(payload)
        comp = self._compression if compression is None else _codecs.require(compression)
        return self._writer.put(key, view, comp)

    def __setitem__(self, edge_id: Any, payload: Any) -> None:
        self.put(edge_id, payload)

    def put_many(self, edge_ids: Any, payloads: Sequence[Any], *, compression: Any = None) -> None:
        """Store ``payloads[i]`` under ``edge_ids[i]`` for every i (a later duplicate wins).

        ``edge_ids``: a sequence of keys or a numpy array of ``KEY_DTYPE`` or
        unsigned ints.  Everything is validated before anything is written
        (``TypeError``/``ValueError`` as for ``put``).  Frames are written in
        pieces of about 16 MiB, each then indexed in bulk; a crash midway
        leaves a prefix of the batch (each record whole or absent), and an
        error (disk full) leaves the pieces before the failing one stored.

        Arrow payloads (``binary``/``large_binary``, chunked or not) and Arrow
        keys (as ``get_many_arrow`` takes them) are written from their buffers,
        without a Python object per record when nothing is compressed; a null
        payload or key raises ``ValueError`` naming it, before any write.
        """
        self._life.check_not_forked()   # (before the lazy numpy import)
        if _arrow.is_arrow(payloads) or _arrow.is_arrow(edge_ids):
            return _arrow.put_many_arrow(self, edge_ids, payloads, compression)
        pairs = key_pairs(edge_ids)     # a numpy key array: never Python ints on the fast path
        keys = key_list(edge_ids) if pairs is None else None
        total = len(keys) if keys is not None else len(pairs) // 2
        views = payload_list(payloads, total)
        comp = self._compression if compression is None else _codecs.require(compression)
        writer = self._writer
        with writer:
            pass                # (read-only or closed: raised before anything is written)
        np = writer.compiled_batches(comp, total)
        if np is not None:
            writer.put_many_frames(keys, pairs, views, np)
        else:
            writer.put_many(keys, pairs, views, comp)

    def delete(self, edge_id: Any) -> bool:
        """Remove ``edge_id`` (a tombstone in the log, then the index); returns whether it was there."""
        return self._writer.delete(key_int(edge_id))

    def __delitem__(self, edge_id: Any) -> None:
        if not self.delete(edge_id):
            raise KeyError(edge_id)

    def pop(self, edge_id: Any, default: Any = _MISSING) -> Any:
        """Remove ``edge_id`` and return its payload (``default``, or ``KeyError`` if absent)."""
        key = key_int(edge_id)
        with self._writer as g:
            meta = g.index.get(key)
            if meta is None:
                if default is _MISSING:
                    raise KeyError(edge_id)
                return default
            value = self._reader.read(g, meta)
            self._writer.delete_locked(g, key)
            return value

    def writing(self) -> Holding:
        """``with store.writing():`` holds the writer lock -- this process's and
        the cross-process one -- across the calls inside, for batch speed (each
        write call otherwise takes and leaves it).  Other processes' writers
        wait for the block; readers never do.  Re-entrant in its thread."""
        return Holding(self._writer, self)

    # -- durability ------------------------------------------------------------------------

    def save(self) -> None:
        """Make every put and delete before this call durable (crash or power loss).

        Order: fdatasync the data file, save (msync) the index, then record
        the checkpoint in the data file header and fdatasync it.  With
        ``sync="never"`` the fsyncs are skipped (process-crash safe only).
        """
        self._writer.save()

    def close(self) -> None:
        """Save (unless read-only), mark the data file clean, close everything; idempotent.

        Once the store is closed its lock is let go, even when Ctrl-C lands
        inside ``close()`` (a later ``close()`` finishes a release cut short);
        interrupted before it began, the store stays open.  In a forked child
        it closes only the child's copies of descriptors and maps: nothing is
        written, truncated, synced or unlocked (the files are the parent's).
        """
        self._life.close(sync=self._sync != "never")

    def __enter__(self) -> "PayloadStore":
        self._live()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        writer, life = getattr(self, "_writer", None), getattr(self, "_life", None)
        if writer is not None and life is not None and (writer.gen is not None or life.lock is not None):
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        writer = getattr(self, "_writer", None)
        state = "closed" if writer is None or writer.gen is None else ("read-only" if self._readonly else "open")
        return f"<PayloadStore {getattr(self, '_directory', '?')!r} {state}>"

    def __reduce__(self) -> Any:
        raise TypeError("a PayloadStore cannot be pickled; pass its directory and open it again")

    # -- whole-store operations ---------------------------------------------------------------

    def stats(self) -> StoreStats:
        """A ``StoreStats`` snapshot (walks the index; puts and deletes from
        other threads wait for the walk)."""
        with self._writer.paused():
            g = self._live()
            size = self._writer.data_end(g)
            try:
                return stats_of(g, size, self._writer.checkpoint)
            except FileNotFoundError:
                if not moved_on(self._writer, g):
                    raise
        return self.stats()     # a racing compact()/rebuild_index() replaced it: again

    def verify(self) -> None:
        """Check the whole store: the index (``CorruptIndexError``), every frame of the
        log, and that every index entry points at a matching, intact record whose
        LZ4/ZSTD bytes decode to its recorded length (as ``get()`` checks).

        Raises ``CorruptPayloadError`` listing every defect; returns None if all is well.
        Puts and deletes from other threads wait until it is done.
        """
        with self._writer.paused():
            g = self._live()
            verify_generation(g, self._writer.data_end(g), self._reader.read)

    def rebuild_index(self, progress: "Callable[[int, int], Any] | None" = None, *,
                      salvage: bool = False) -> int:
        """Rebuild the index from the data file alone; returns the entries indexed.

        Reads the whole log in order (puts insert, tombstones delete), writes a
        new index generation in bulk and switches to it by renaming a new
        MANIFEST (a crash leaves the old or the new index, both complete).
        ``progress(done_bytes, total_bytes)`` is called as the log is read.
        Writers wait for the whole rebuild; readers go on with the old index.

        A damaged stretch of the log does not stop it: the rebuild resyncs on
        the next valid frame.  Damaged records that are dead (their key has a
        later record or tombstone) cost nothing.  If a key's newest record is
        damaged, the rebuild raises ``DamagedRecordsError`` naming the keys and
        changes nothing; with ``salvage=True`` it drops exactly those keys
        (appending a tombstone for each, so they stay dropped) and reports them
        in ``last_salvage`` (a ``SalvageReport``; None when nothing was damaged).
        """
        check_flag("salvage", salvage)
        progress = self._life.fork_checked(progress)
        writer = self._writer
        with self._life.maintaining(), writer as g:
            self.last_salvage = None
            new, count, report = rebuild_index(g, writer, self._dir, self._write_manifest, progress,
                                               salvage=salvage)
            if report is not None:
                self.last_salvage = report
                if report.keys:
                    writer.tombstones(new, report.keys)
            return count

    def compact(self, *, salvage: bool = False) -> None:
        """Rewrite the live records into a new data file; disk use returns to the live bytes.

        Puts, deletes and reads go on while the live records are copied; puts
        wait only for the final step (copying what was written meanwhile,
        fsyncs, the MANIFEST rename).  See docs/internals/design.md.

        Every index entry is accounted for.  Damaged records the index no
        longer points at are dropped.  If a live record cannot be read back
        (damaged, or its index entry points past the log or at another
        key's record), ``DamagedRecordsError`` names the keys and nothing is
        changed; ``salvage=True`` goes on without exactly those keys.
        ``last_salvage`` then holds a ``SalvageReport`` (keys dropped,
        damaged stretches and bytes passed over), None if there were none.
        """
        self._life.check_not_forked()   # (before the lazy import)
        from diskhash._store.compact import compact
        check_flag("salvage", salvage)
        self.last_salvage = None
        with self._life.maintaining():
            with self._writer as g:
                pass            # (the generation other processes may have switched to)
            done = compact(g, self._writer, self._dir, self._write_manifest, salvage=salvage)
        self.last_compaction = done.report
        self.last_salvage = done.salvage

    # -- Arrow -----------------------------------------------------------------------------------

    def get_many_arrow(self, edge_ids: Any) -> Any:
        """The payloads of ``edge_ids`` as one ``pyarrow.LargeBinaryArray``, in
        their order, null where absent (needs pyarrow: the ``arrow`` extra).

        No Python object per payload: the keys are probed and the payloads
        checked and copied -- LZ4/ZSTD ones decoded -- straight into the
        array's one data buffer without the GIL (``_store/arrow_fill.pyx``).
        ``edge_ids`` as for ``get_many``, or Arrow keys: ``fixed_size_binary(16)``
        (the ``KEY_DTYPE`` bytes), a struct/table of uint64 ``lo``/``hi``, or
        unsigned integers, chunked or not.  Errors as for ``get``.
        """
        return _arrow.get_many_arrow(BatchReads(self), edge_ids)


#: ``InlineReads.get``'s answer when another process switched the generation.
FOLLOW: Any = object()


class InlineReads:
    """The small interface the async twin reads and puts through on its event
    loop (``AsyncPayloadStore``): ``get`` (the compiled call on the store's
    current generation, then ``StoreReader.read_inline``), ``read``, ``live``,
    ``try_put`` (``Writer.try_put``) and the message of an iteration a
    compaction cut short."""

    __slots__ = ("_writer", "_verify", "_read_inline", "read", "live", "try_put", "_directory")

    def __init__(self, store: PayloadStore) -> None:
        self._writer = store._writer
        self._verify = store._verify
        self._read_inline = store._reader.read_inline
        self._directory = store._directory
        self.read = store._reader.read
        self.live = store._live
        self.try_put = store._writer.try_put

    def behind(self) -> bool:
        """Whether another process switched the store's generation, which the
        next read opens (file system calls: the async twin makes them in a
        worker thread, ``follow``)."""
        sharing = self._writer.sharing
        return sharing is not None and sharing.behind()

    def follow(self) -> None:
        self._writer.current()

    def get(self, edge_id: Any, default: Any, limit: int) -> Any:
        """The payload, ``default``, a ``ReadLater`` (over ``limit`` stored bytes),
        or ``FOLLOW`` (``behind()``: follow in a worker thread, then again)."""
        g = self._writer.gen
        if g is not None:
            reader = g.reader
            if reader is not None:          # one compiled call for a record within the limit
                got = reader.get(edge_id, self._verify, limit if limit < BIG_READ else BIG_READ)
                if type(got) is bytes:
                    return got
                if got is None:
                    return default
        if self.behind():
            return FOLLOW
        return self._read_inline(self.live, edge_id, default, limit)

    def replaced_message(self) -> str:
        return replaced_message(self._directory)


def closed_error(store: PayloadStore) -> IndexClosedError:
    """The ``IndexClosedError`` of a closed ``store`` (one inherited across
    fork() says so): what ``ShardedStore`` raises for its closed shards."""
    return store._life.closed_error()


def put_many_packed(store: PayloadStore, pieces: "Sequence[tuple[Any, Any, Any]]") -> bool:
    """The Arrow put's write path (``_store/arrow.py``): ``pieces`` of
    (keys, ends, data) -- a binary array's keys, payload ends and data
    buffer -- appended and indexed uncompressed in one pass (``Writer.put_many_packed``); False (nothing
    written) when a piece cannot take this path and the caller must use
    ``put_many``."""
    store._life.check_not_forked()      # (before the lazy numpy import)
    return store._writer.put_many_packed(pieces)


class BatchReads:
    """The small interface the Arrow batch reads and the Parquet export go
    through (``_store/arrow.py``, ``_store/parquet.py``): ``live()`` (the
    current generation, or the closed store's error), ``reader`` (the
    store's ``StoreReader``), ``current()`` (the generation, None once
    closed), ``paused()`` (this store's writers held off while a walk runs),
    ``directory`` and ``data_end(g)`` (where the log of generation ``g``
    ends, as far as this store may read)."""

    __slots__ = ("live", "reader", "current", "paused", "directory", "data_end")

    def __init__(self, store: PayloadStore) -> None:
        writer = store._writer
        self.live = store._live
        self.reader = store._reader
        self.current: "Callable[[], Generation | None]" = lambda: writer.gen
        self.paused = writer.paused
        self.directory = store._directory
        self.data_end = writer.data_end
