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

import errno
import itertools
import operator
import os
import threading
import weakref
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Iterator, Sequence

from diskhash._format import payload as fmt
from diskhash._fs.files import IndexLock
from diskhash._index.table import DiskHashIndex
from diskhash._store import codecs as _codecs
from diskhash._store.generation import (
    Generation,
    StoreDirectory,
    _allocate_blocks,
    _fsync_data,
    _populate,
    _write_all,
    unlink,
    write_header,
)
from diskhash._store.keys import (
    _MASK64,
    SYNC_POLICIES,
    _check_timeout,
    _key_halves,
    _key_int,
    _key_list,
    _key_pairs,
    _numpy,
    _pair_keys,
    _payload_view,
    _sync_interval,
)
from diskhash._store.maintenance import MaintenanceLock, StoreStats, stats_of, verify_generation
from diskhash._store.reader import BIG_READ, StoreReader
from diskhash._store.recovery import apply_final, build_index, open_readonly, open_writable
from diskhash._store.write import encode_frames as _encode_frames
from diskhash._store.write import encode_frames_packed as _encode_frames_packed
from diskhash._store.write import encode_frames_u128 as _encode_frames_u128
from diskhash._store.write import put_frame as _put_frame
from diskhash._types import Compression, PayloadMeta, SalvageReport, StoreRecovery
from diskhash.errors import (
    IndexClosedError,
    ReadOnlyIndexError,
)

__all__ = ["PayloadStore", "StoreStats", "SYNC_POLICIES"]


_MISSING: Any = object()
#: The data file grows by this fraction of its size (at least ALLOC_MIN, at most
#: ALLOC_MAX bytes), allocated for real, so appends do not fail half-way on a full disk.
ALLOC_MIN = 1 << 20
ALLOC_MAX = 16 << 20
#: put_many writes its frames in pieces of about this many bytes (then indexes them).
PUT_MANY_CHUNK = 16 << 20
#: put_many of at least this many records sizes the index for all of them first.
PUT_MANY_RESERVE = 4096


#: Stores open in this process, so a forked child can disable its copies
#: (as the index does with its own: diskhash/_index/table_lifetime.pxi).
_open_stores: "weakref.WeakSet[PayloadStore]" = weakref.WeakSet()


def _disable_inherited_stores() -> None:
    for store in list(_open_stores):
        try:
            store._disable_in_child()
        except Exception:  # pragma: no cover - an at-fork handler must not raise
            pass


os.register_at_fork(after_in_child=_disable_inherited_stores)


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

    Raises ``OSError`` for the file system, ``IndexLockedError`` if another
    writer holds the store, ``CorruptPayloadError`` for a damaged data file
    or manifest, ``CorruptIndexError`` for a damaged index on a read-only
    open (a writable open rebuilds it from the data file).
    """

    #: Set in a forked child's copy (``os.register_at_fork``): every call then
    #: raises ``IndexClosedError`` before touching a file.
    _forked = False

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
    ) -> None:
        self._gen: "Generation | None" = None
        self._lock: "IndexLock | None" = None
        self._closed = True
        directory = os.fspath(directory)
        if not isinstance(directory, str):
            raise TypeError(f"directory must be a str path, not {type(directory).__name__}")
        if not directory:
            raise ValueError("directory must not be empty")
        if not isinstance(readonly, bool):
            raise TypeError(f"readonly must be a bool, not {type(readonly).__name__}")
        if not isinstance(verify_checksums, bool):
            raise TypeError(f"verify_checksums must be a bool, not {type(verify_checksums).__name__}")
        timeout = _check_timeout(timeout)
        self._compression = _codecs.require(compression)
        self._sync_every = _sync_interval(sync)
        self._sync = sync
        self._readonly = readonly
        self._verify = verify_checksums
        self._reader = StoreReader("", verify_checksums)
        self._write_lock = threading.RLock()
        #: Held for the whole of compact() and rebuild_index() (and by close()).
        self._maintenance = MaintenanceLock()
        #: What the last compact() measured (seconds, puts_waited_seconds, bytes).
        self.last_compaction: "dict[str, Any] | None" = None
        self._unsaved = False
        self._end = 0
        self._checkpoint = 0
        self._syncer: "threading.Thread | None" = None
        self._stop_syncer = threading.Event()
        #: What the writable open recovered (``StoreRecovery``), or None when
        #: the store was closed cleanly.
        self.recovery: "StoreRecovery | None" = None
        #: What the last compact() or rebuild_index() (or a ``salvage=True`` open
        #: that had to rebuild) passed over or dropped (a SalvageReport), or None.
        self.last_salvage: "SalvageReport | None" = None
        if not isinstance(salvage, bool):
            raise TypeError(f"salvage must be a bool, not {type(salvage).__name__}")
        self._salvage = salvage
        if readonly:
            if not os.path.isdir(directory):
                raise FileNotFoundError(errno.ENOENT, "no PayloadStore directory", directory)
        else:
            os.makedirs(directory, exist_ok=True)
        self._directory = self._reader.directory = os.path.realpath(directory)
        self._dir = StoreDirectory(self._directory)
        self._lock = IndexLock(os.path.join(self._directory, "store"), not readonly, timeout)
        try:
            if readonly:
                opened = open_readonly(self._dir)
            else:
                opened = open_writable(self._dir, fsync=sync != "never", salvage=salvage)
                self.recovery, self.last_salvage = opened.recovery, opened.salvage
            self._gen, self._end, self._checkpoint = opened.gen, opened.end, opened.checkpoint
        except BaseException:
            self._abandon()
            raise
        self._closed = False
        _open_stores.add(self)
        if self._sync_every is not None and not readonly:
            self._syncer = threading.Thread(target=self._sync_loop, name="diskhash-store-sync",
                                            daemon=True)
            self._syncer.start()

    # -- opening -------------------------------------------------------------------

    def _write_manifest(self, data_gen: int, index_gen: int) -> None:
        if self._forked:            # (a fork from a progress callback: the commit is the parent's)
            raise self._closed_error()
        self._dir.write_manifest(data_gen, index_gen)

    def _write_header(self, fd: int, checkpoint: int, flags: int, sync: bool) -> None:
        write_header(fd, checkpoint, flags, sync and self._sync != "never")

    def _abandon(self) -> None:
        g, self._gen = self._gen, None
        try:
            if g is not None:
                g.index.close()
        finally:
            self._release_lock()

    def _release_lock(self) -> None:
        """Let go of store.lock (idempotent; forgotten only once released)."""
        lock = self._lock
        if lock is not None:
            lock.close()
            self._lock = None

    # -- state -----------------------------------------------------------------------

    def _live(self) -> Generation:
        g = self._gen
        if g is None:
            raise self._closed_error()
        return g

    def _closed_error(self) -> IndexClosedError:
        where = getattr(self, "_directory", "?")
        if self._forked:
            return IndexClosedError(
                f"{where}: store was inherited across fork(); open it again in the child "
                f"(PayloadStore(directory) after the fork): its files are the parent's")
        return IndexClosedError(f"{where}: store is closed")

    def _disable_in_child(self) -> None:
        """In a forked child (``os.register_at_fork``): make this copy unusable.

        The child shares the parent's data file, its map and its lock: a write
        at the child's stale end of the log, a truncation or an unlock at close
        would destroy the parent's newer records or drop its lock.  So the
        copy is marked, its locks replaced (a parent thread may have held them
        at the fork: the child's copies would stay held for ever) and its
        descriptors and maps let go without writing, syncing or unlocking
        anything.  Every call then raises ``IndexClosedError`` naming the fix.
        """
        self._forked = True
        self._write_lock = threading.RLock()
        self._maintenance = MaintenanceLock()
        self._stop_syncer = threading.Event()
        self._syncer = None             # (the thread does not exist in the child)
        self._release_inherited()

    def _release_inherited(self) -> None:
        """The child's own resources only: maps unmapped, descriptors closed
        (the data file's pointed at /dev/null until its finaliser), the lock's
        descriptor closed without ``LOCK_UN`` (the flock is the parent's)."""
        g, self._gen = self._gen, None
        if g is not None:
            g.release()
        lock = self._lock
        if lock is not None:
            try:
                lock.close(unlock=False)
            finally:
                self._lock = None

    def _writable(self) -> Generation:
        if self._readonly:
            raise ReadOnlyIndexError(f"{self._directory}: store was opened read-only")
        return self._live()

    @property
    def directory(self) -> str:
        """The store's directory (resolved: symlinks followed)."""
        return self._directory

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def closed(self) -> bool:
        return self._gen is None

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
        g = self._gen
        if g is not None:
            reader = g.reader
            if reader is not None:          # one compiled call: probe, check, copy
                got = reader.get(edge_id, self._verify, BIG_READ)
                if type(got) is bytes:
                    return got
                if got is None:
                    return default
        return self._get_slow(edge_id, default)

    def _get_slow(self, edge_id: Any, default: Any) -> Any:
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
        return self._keys(iter(self._live().index))

    def keys(self) -> Iterator[int]:
        return self._keys(iter(self._live().index))

    def _keys(self, it: Iterator[int]) -> Iterator[int]:
        # Holds the index iterator only (not the generation), so a replaced
        # generation is let go and its index closed: that is a RuntimeError
        # here, as for any change during iteration, not IndexClosedError on an
        # open store.
        while True:
            try:
                key = next(it)
            except StopIteration:
                return
            except IndexClosedError:
                if self._gen is None:
                    raise
                raise RuntimeError(self._replaced_message()) from None
            yield key

    def _replaced_message(self) -> str:
        return f"{self._directory}: compact() or rebuild_index() replaced the index during iteration"

    def get_many(self, edge_ids: Iterable[Any]) -> "list[bytes | None]":
        """The payloads of ``edge_ids``, in their order (None where absent).

        One compiled loop probes the index, checks and copies the records;
        only the unusual ones (big, remapped, damaged) go through ``get``'s
        Python path.  Errors as for ``get``.
        """
        g = self._live()
        reader = g.reader
        if reader is None:
            return [self._get_slow(k, None) for k in _key_list(edge_ids)]
        halves = _key_halves(edge_ids)
        keys: "list[Any]"
        if halves is not None:
            out, fixups = reader.get_many_u128(halves[0], halves[1], self._verify, BIG_READ)
            lo, hi = halves
            for i in fixups:
                out[i] = self._get_slow(int(lo[i]) | (int(hi[i]) << 64), None)
            return out  # type: ignore[no-any-return]
        keys = edge_ids if type(edge_ids) is list else _key_list(edge_ids)
        out, fixups = reader.get_many(keys, self._verify, BIG_READ)
        for i in fixups:
            out[i] = self._get_slow(keys[i], None)
        return out  # type: ignore[no-any-return]

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

    def _encode(self, key: int, view: Any, comp: int) -> tuple[bytes, bytes, int, int, int]:
        """One frame as (checksum bytes, the rest of the frame, compression used,
        stored length, uncompressed length)."""
        n = len(view)
        used = 0
        stored: Any = view
        if comp and n:
            packed = _codecs.compress(comp, view)
            if packed is not None:
                stored, used = packed, comp
        slen = len(stored)
        rest = fmt.FRAME_BODY.pack(fmt.KIND_PUT, used, fmt.FRAME_MARK, slen, n, key & _MASK64, key >> 64) + stored
        return fmt.checksum(rest).to_bytes(4, "little"), rest, used, slen, n

    def _append(self, g: Generation, buffers: Sequence[Any], size: int) -> int:
        """Append one frame, given as (its 4 checksum bytes, the rest), at the end
        of the log; returns where it starts.

        The bytes are copied into the writer's shared map of the file (no
        system call), into blocks ``_allocate`` reserved beforehand: a full
        disk fails there, before anything is written, never as a SIGBUS.
        They reach the page cache at once (a killed process loses nothing)
        and the disk at ``save()``.  The rest of the frame is copied first and
        its checksum last, each frame after the one before: ``memcpy`` may
        store the end of a buffer before its start, so one copy of many frames
        killed midway could leave a hole with whole frames after it.
        """
        start = self._end
        end = start + size
        if end > g.alloc:
            self._allocate(g, end)
        view = g.view
        if view is None or end > len(view):
            view = g.remap()
        ck, rest = buffers
        view[start + 4:end] = rest
        view[start:start + 4] = ck
        self._end = end
        self._unsaved = True
        return start

    def _append_frames(self, g: Generation, blob: "bytes | memoryview") -> int:
        """Append many whole frames with one ``pwrite``: the kernel copies in
        file order and stops between pages on SIGKILL, so a crash leaves a prefix
        of the frames (the last one possibly torn), never a hole."""
        start = self._end
        end = start + len(blob)
        if end > g.alloc:
            self._allocate(g, end, populate=False)      # pwrite fills the pages itself
        try:
            _write_all(g.fd, (blob,), start)
            # (in the try: Ctrl-C between the pwrite and this line would leave
            # the frames written past an end the next append writes over)
            self._end = end
            self._unsaved = True
        except BaseException:
            # Some frames may be written (Ctrl-C right after the pwrite, an I/O
            # error after a short one): zero them, or the next append's shorter
            # frames would leave whole ones after a torn one -- damage in the
            # middle of the log, which a writable open then refuses.  (The end
            # stays past them if the zeroing does not happen.)
            self._end = end
            self._undo_append(g, start, end)
            raise
        return start

    def _allocate(self, g: Generation, end: int, populate: bool = True) -> None:
        """Allocate the file's blocks to past ``end`` and map them (ENOSPC here, nothing
        written); with ``populate``, fault the new pages in for writes through the map."""
        want = end + min(max(end // 8, ALLOC_MIN), ALLOC_MAX)
        try:
            _allocate_blocks(g.fd, g.alloc, want)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            _allocate_blocks(g.fd, g.alloc, end)     # the last few bytes may still fit
            want = end
        old = g.alloc
        g.alloc = max(want, os.fstat(g.fd).st_size)
        g.remap()
        if populate:
            _populate(g.map, g.fd, old, g.alloc)

    def _undo_append(self, g: Generation, start: int, end: int) -> None:
        """Forget an append whose indexing failed: zero it, so no open replays it.

        The log's end moves back to ``start`` only once the zeros are there
        (read back, so that Ctrl-C landing around the write cannot split the
        two): an end moved back over frames left whole would let the next,
        shorter append leave valid frames after a torn one, and zeros left
        before the end are a hole in the middle of the log.  Either is damage
        a writable open refuses."""
        try:
            _write_all(g.fd, (bytes(end - start),), start)
        except OSError:  # pragma: no cover - a dead disk; the frames stay unindexed
            pass
        finally:
            try:
                if os.pread(g.fd, fmt.FRAME_SIZE, start).count(0) == fmt.FRAME_SIZE:
                    self._end = start
            except OSError:  # pragma: no cover
                pass

    def _undo_unindexed(self, g: Generation, end: int, rows: "list[tuple[int, int]]") -> None:
        """``_undo_append`` for the frames the index did not take, after indexing
        raised: ``rows`` (key, payload offset) are the frames up to ``end``, indexed
        in order.  An exception is not proof that nothing was indexed: Ctrl-C
        lands at the next bytecode, after the call returned, and an
        ``insert`` loop may stop midway.  Zeroing an indexed frame would
        leave its key pointing at whatever the next append writes there, so
        the indexed prefix stays (the log's end after it) and the rest is zeroed."""
        kept = _indexed_prefix(g.index, rows)
        if kept < len(rows):
            self._undo_append(g, rows[kept][1] - fmt.FRAME_SIZE, end)
        else:
            self._end = end
            self._unsaved = True

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
                and _put_frame is not None and not self._readonly
                and len(payload) <= fmt.MAX_LENGTH):
            # (read-only, closed and oversized calls take the path below, which
            # reports a bad key first, as it always has)
            if type(edge_id) is not int:
                # Before the writer lock: a key's __index__ is Python code, which
                # may put to this store (the lock is reentrant) and must not do
                # so between _put_frame's reading the log's end and its write.
                edge_id = _key_int(edge_id)
            with self._write_lock:
                g = self._gen
                if g is not None and type(g.index) is DiskHashIndex:
                    return self._put_frame(g, edge_id, payload)
        key = _key_int(edge_id)
        view = _payload_view(payload)
        comp = self._compression if compression is None else _codecs.require(compression)
        ck, rest, used, slen, n = self._encode(key, view, comp)
        with self._write_lock:
            g = self._writable()
            start = self._append(g, (ck, rest), fmt.FRAME_SIZE + slen)
            meta = PayloadMeta(key, start + fmt.FRAME_SIZE, slen, used, n)
            try:
                g.index.insert(key, meta)
            except BaseException:
                self._undo_unindexed(g, start + fmt.FRAME_SIZE + slen, [(key, meta.offset)])
                raise
            return meta

    def _put_frame(self, g: Generation, edge_id: Any, payload: bytes) -> PayloadMeta:
        """``put`` of uncompressed bytes, the writer lock held: the frame written
        into the map and indexed in one compiled call (``_store.write.put_frame``;
        the same order and undo as ``_append`` + ``insert``)."""
        start = self._end
        end = start + fmt.FRAME_SIZE + len(payload)
        if end > g.alloc:
            _key_int(edge_id)               # a bad key raises before the file grows
            self._allocate(g, end)
        view = g.view
        if view is None or end > len(view):
            view = g.remap()
        try:
            meta: PayloadMeta = _put_frame(g.index, view, start, edge_id, payload)
        except BaseException:
            # (put_frame zeroes a frame it could not index; one it did index, with
            # Ctrl-C landing as it returned, is kept)
            if type(edge_id) is int and _indexed_prefix(g.index, [(edge_id, start + fmt.FRAME_SIZE)]):
                self._end = end
                self._unsaved = True
            raise
        self._end = end
        self._unsaved = True
        return meta

    def _try_put(self, key: int, view: memoryview, compression: Any) -> "PayloadMeta | None":
        """``put`` if it can finish without waiting: the writer lock free and no index
        grow needed; else None and nothing written (the async store's inline lane)."""
        comp = self._compression if compression is None else _codecs.require(compression)
        ck, rest, used, slen, n = self._encode(key, view, comp)
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            g = self._writable()
            if self._end + fmt.FRAME_SIZE + slen > g.alloc:
                return None         # the file must grow: a worker thread does that
            start = self._append(g, (ck, rest), fmt.FRAME_SIZE + slen)
            meta = PayloadMeta(key, start + fmt.FRAME_SIZE, slen, used, n)
            done = False
            try:
                done = g.index._try_insert(key, meta)
            except BaseException:
                self._undo_unindexed(g, start + fmt.FRAME_SIZE + slen, [(key, meta.offset)])
                raise
            if not done:
                self._undo_append(g, start, start + fmt.FRAME_SIZE + slen)
            return meta if done else None
        finally:
            self._write_lock.release()

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
        """
        if self._forked:        # before the lazy numpy import: a forked child may have
            raise self._closed_error()  # inherited its lock held by a parent thread (a hang)
        pairs = _key_pairs(edge_ids)     # a numpy key array: never Python ints on the fast path
        keys = _key_list(edge_ids) if pairs is None else None
        total = len(keys) if keys is not None else len(pairs) // 2
        if isinstance(payloads, (str, bytes, bytearray, memoryview)) or payloads is None:
            raise TypeError("payloads must be a sequence of bytes-like objects")
        payloads = list(payloads)
        if total != len(payloads):
            raise ValueError(f"put_many got {total} edge ids but {len(payloads)} payloads")
        limit = fmt.MAX_LENGTH
        # all bytes, none too long: checked in two C-speed passes ("is", not a set of
        # the types: a metaclass's __eq__/__hash__ can make a bytes subclass with
        # a lying __len__ equal to bytes)
        if (all(map(operator.is_, map(type, payloads), itertools.repeat(bytes)))
                and max(map(len, payloads), default=0) <= limit):
            views = payloads
        else:
            views = [p if type(p) is bytes and len(p) <= limit else _payload_view(p, f"payloads[{i}]")
                     for i, p in enumerate(payloads)]
        comp = self._compression if compression is None else _codecs.require(compression)
        with self._write_lock:
            self._writable()
        np = _numpy() if comp == 0 and total >= 64 and _encode_frames is not None else None
        if np is not None:
            self._put_many_frames(keys, pairs, views, np)
            return
        if keys is None:
            keys = _pair_keys(pairs, 0, total)
        encode = self._encode
        i = 0
        while i < total:
            parts: list[bytes] = []
            rows: list[tuple[int, int, int, int, int]] = []
            size = 0
            while i < total and size < PUT_MANY_CHUNK:
                key = keys[i]
                ck, rest, used, slen, n = encode(key, views[i], comp)
                parts.append(ck)
                parts.append(rest)
                rows.append((key, size + fmt.FRAME_SIZE, slen, used, n))
                size += fmt.FRAME_SIZE + slen
                i += 1
            blob = b"".join(parts)
            del parts
            with self._write_lock:
                g = self._writable()
                start = self._end
                try:
                    self._append_frames(g, blob)        # (in the try: see _append_indexed)
                    _insert_rows(g.index, rows, start)
                except BaseException:
                    if self._end != start:
                        self._undo_unindexed(g, start + size, [(r[0], r[1] + start) for r in rows])
                    raise

    def _put_many_frames(self, keys: "list[int] | None", pairs: Any, views: "list[Any]",
                         np: Any) -> None:
        """``put_many`` without compression: each piece's frames and index rows
        built in one compiled call (``_store.write.encode_frames``, or
        ``encode_frames_u128`` over ``pairs`` when ``keys`` is None), written with
        one pwrite, indexed with one ``insert_many``.  A big batch grows the
        index once, up front, to hold every key it adds, not once per
        doubling on the way."""
        total = len(views)
        self._reserve_for(total, [pairs] if keys is None else keys)
        buf = bytearray()
        i = 0
        while i < total:
            if keys is None:
                i_next, size, key_rows, meta_rows = _encode_frames_u128(pairs, views, i, PUT_MANY_CHUNK, buf)
            else:
                i_next, size, key_rows, meta_rows = _encode_frames(keys, views, i, PUT_MANY_CHUNK, buf)
            self._append_indexed(buf, size, key_rows, meta_rows, np)
            i = i_next

    def _reserve_for(self, total: int, keys: Any) -> None:
        """Grow the index once, up front, for the keys of a batch of ``total``
        that it does not hold yet (an overwrite takes no new slot, so a batch
        of overwrites must not double the table).  ``keys``: a list of ints,
        or a list of uint64 arrays of (low, high) pairs."""
        if total >= PUT_MANY_RESERVE:
            with self._write_lock:
                g = self._writable()
                index = g.index
                if keys and not isinstance(keys[0], int):
                    from diskhash._index import dtypes as _dtypes
                    new = sum(len(p) // 2 - int(index.contains_many(p.view(_dtypes.KEY_DTYPE)).sum())
                              for p in keys)
                else:
                    new = sum(1 for k in keys if k not in index)
                index.reserve(len(index) + new)

    def _append_indexed(self, buf: bytearray, size: int, key_rows: bytes, meta_rows: bytearray,
                        np: Any) -> None:
        """Write the whole frames ``buf[:size]`` at the log's end with one
        ``pwrite`` and index them with one ``insert_many`` (``key_rows`` /
        ``meta_rows``: the ``encode_frames*`` rows, offsets relative to the
        frames' start).  If indexing fails the frames are zeroed again (their
        keys and places read back from the rows: the lengths, which the
        offset update leaves alone) and the error raised, so no open replays
        them."""
        from diskhash._index import dtypes as _dtypes
        karr = np.frombuffer(key_rows, dtype=_dtypes.KEY_DTYPE)
        recs = np.frombuffer(meta_rows, dtype=_dtypes.META_DTYPE)
        with memoryview(buf) as blob, self._write_lock:
            g = self._writable()
            start = self._end
            try:
                # (the append in the try: Ctrl-C after it returned, before a
                # try, would leave its frames unindexed for an open to replay)
                self._append_frames(g, blob[:size])
                recs["offset"] += start
                g.index.insert_many(karr, recs)
            except BaseException:
                if self._end != start:      # written (a failed append undoes itself)
                    rows = _frame_rows(_pair_keys(karr.view(np.uint64), 0, len(karr)),
                                       recs["length"].tolist(), start)
                    self._undo_unindexed(g, start + size, rows)
                raise

    def _put_many_packed(self, pieces: "Sequence[tuple[Any, Any, Any]]") -> bool:
        """``put_many`` of records already packed, uncompressed: each piece a
        ``(keys, ends, data)`` triple -- a ``KEY_DTYPE`` array, the ``int64``
        end offset of each payload in ``data``, and the payload bytes back to
        back (``_packed.unpack_piece``; the sharded build's shard writers).
        No Python object per record.  Returns False, having written nothing,
        when the store compresses by default or the compiled module or numpy
        is missing (the caller then takes ``put_many``); raises ``TypeError``/
        ``ValueError`` for keys or ends that do not fit, before anything is
        written."""
        np = _numpy()
        if self._compression or np is None or _encode_frames is None:
            return False
        from diskhash._index import dtypes as _dtypes
        with self._write_lock:
            self._writable()
        prepared = []
        total = 0
        for keys, ends, data in pieces:
            if not isinstance(keys, np.ndarray) or keys.dtype != _dtypes.KEY_DTYPE or keys.ndim != 1:
                raise TypeError("packed keys must be a 1-D diskhash.KEY_DTYPE array")
            # copies of keys and ends (ours: the undo must see what was written),
            # the data as flat bytes: anything else is refused here, not after
            # earlier pieces are written
            pairs = np.array(keys, order="C").view(np.uint64)
            ends = np.asarray(ends)
            if ends.ndim != 1 or (ends.dtype.kind not in "iu" and len(ends)):
                raise TypeError("packed payload ends must be a 1-D integer array")
            ends = np.array(ends, dtype=np.int64)
            if len(ends) != len(keys):
                raise ValueError(f"{len(keys)} packed keys but {len(ends)} payload ends")
            try:
                data = memoryview(data).cast("B")
            except TypeError:
                raise TypeError(f"packed payload data must be a C-contiguous bytes-like object, "
                                f"not {type(data).__name__}") from None
            size = data.nbytes
            if len(ends):
                lengths = np.diff(ends, prepend=0)
                if int(lengths.min()) < 0 or int(ends[-1]) > size:
                    raise ValueError(f"packed payload ends do not fit {size} payload bytes")
                if int(lengths.max()) > fmt.MAX_LENGTH:
                    raise ValueError(f"a packed payload is over the {fmt.MAX_LENGTH}-byte limit")
            prepared.append((pairs, ends, data))
            total += len(keys)
        self._reserve_for(total, [p[0] for p in prepared])
        buf = bytearray()
        for pairs, ends, data in prepared:
            n = len(ends)
            i = 0
            while i < n:
                i_next, size, key_rows, meta_rows = _encode_frames_packed(
                    pairs, ends, data, i, PUT_MANY_CHUNK, buf)
                self._append_indexed(buf, size, key_rows, meta_rows, np)
                i = i_next
        return True

    def _delete_locked(self, g: Generation, key: int) -> bool:
        if key not in g.index:
            return False
        frame = fmt.tombstone(key)
        start = self._append(g, (frame[:4], frame[4:]), fmt.FRAME_SIZE)
        try:
            g.index.delete(key)
        except BaseException:
            if _still_there(g.index, key):     # (not after Ctrl-C landed as delete returned)
                self._undo_append(g, start, start + fmt.FRAME_SIZE)
            raise
        return True

    def delete(self, edge_id: Any) -> bool:
        """Remove ``edge_id`` (a tombstone in the log, then the index); returns whether it was there."""
        key = _key_int(edge_id)
        with self._write_lock:
            return self._delete_locked(self._writable(), key)

    def __delitem__(self, edge_id: Any) -> None:
        if not self.delete(edge_id):
            raise KeyError(edge_id)

    def pop(self, edge_id: Any, default: Any = _MISSING) -> Any:
        """Remove ``edge_id`` and return its payload (``default``, or ``KeyError`` if absent)."""
        key = _key_int(edge_id)
        with self._write_lock:
            g = self._writable()
            meta = g.index.get(key)
            if meta is None:
                if default is _MISSING:
                    raise KeyError(edge_id)
                return default
            value = self._reader.read(g, meta)
            self._delete_locked(g, key)
            return value

    # -- durability ------------------------------------------------------------------------

    def save(self) -> None:
        """Make every put and delete before this call durable (crash or power loss).

        Order: fdatasync the data file, save (msync) the index, then record
        the checkpoint in the data file header and fdatasync it.  With
        ``sync="never"`` the fsyncs are skipped (process-crash safe only).
        """
        with self._write_lock:
            g = self._writable()
            self._save_locked(g)

    def _save_locked(self, g: Generation) -> None:
        end = self._end
        sync = self._sync != "never"
        if sync:
            if g.map is not None:
                g.map.flush()           # msync: the appends made through the map
            _fsync_data(g.fd)
            # (sync="never": the index's writes are in the page cache, which
            # a process crash keeps; its msync is an fsync, skipped too)
            g.index.save()
        if end != self._checkpoint:
            self._write_header(g.fd, end, fmt.FLAG_DIRTY, sync=True)
            self._checkpoint = end
        self._unsaved = False

    def _sync_loop(self) -> None:
        interval = self._sync_every
        assert interval is not None
        while not self._stop_syncer.wait(interval):
            if not self._unsaved:
                continue
            try:
                with self._write_lock:
                    g = self._gen
                    if g is None:
                        return
                    self._save_locked(g)
            except Exception:  # pragma: no cover - the next save()/close() reports it
                pass

    def close(self) -> None:
        """Save (unless read-only), mark the data file clean, close everything; idempotent.

        Once the store is closed its lock is let go, even when Ctrl-C lands
        inside ``close()`` (a later ``close()`` finishes a release cut short);
        interrupted before it began, the store stays open.  In a forked child
        it closes only the child's copies of descriptors and maps: nothing is
        written, truncated, synced or unlocked (the files are the parent's).
        """
        if self._forked:
            self._release_inherited()
            return
        try:
            with self._maintenance, self._write_lock:
                g = self._gen
                if g is None:
                    return
                self._stop_syncer.set()
                try:
                    if not self._readonly:
                        self._save_locked(g)
                        os.ftruncate(g.fd, self._end)       # give back the unused allocation
                        self._write_header(g.fd, self._end, 0, sync=True)
                finally:
                    self._gen = None
                    _open_stores.discard(self)
                    # no msync with sync="never": as in _save_locked
                    close_index = g.index._close_unsynced if self._sync == "never" else g.index.close
                    try:
                        try:
                            close_index()
                        finally:
                            try:
                                close_index()   # (once closed, only finishes a release Ctrl-C cut short)
                            finally:
                                g.release()
                    finally:
                        self._release_lock()
        finally:
            if self._gen is None:
                self._release_lock()
                self._stop_syncer.set()
                syncer, self._syncer = self._syncer, None
                if syncer is not None and syncer is not threading.current_thread():
                    syncer.join()      # it sees the store closed and ends

    def __enter__(self) -> "PayloadStore":
        self._live()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_gen", None) is not None or getattr(self, "_lock", None) is not None:
            try:
                self.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        state = "closed" if self._gen is None else ("read-only" if self._readonly else "open")
        return f"<PayloadStore {getattr(self, '_directory', '?')!r} {state}>"

    def __reduce__(self) -> Any:
        raise TypeError("a PayloadStore cannot be pickled; pass its directory and open it again")

    # -- whole-store operations ---------------------------------------------------------------

    def _data_end(self, g: Generation) -> int:
        """Where the log ends: the writer knows; a reader takes the file's size."""
        return os.fstat(g.fd).st_size if self._readonly else self._end

    def _writers_paused(self) -> Any:
        """Hold this store's writers off while a walk of the index runs (a put
        or delete from another thread would end the walk with ``RuntimeError``:
        the index changed size).  A read-only store has no writers to stop."""
        return nullcontext() if self._readonly else self._write_lock

    def stats(self) -> StoreStats:
        """A ``StoreStats`` snapshot (walks the index; puts and deletes from
        other threads wait for the walk)."""
        with self._writers_paused():
            g = self._live()
            size = self._data_end(g)
            try:
                return stats_of(g, size, self._checkpoint)
            except FileNotFoundError:
                if self._gen is g or self._gen is None:
                    raise
        return self.stats()     # a racing compact()/rebuild_index() replaced it: again

    def verify(self) -> None:
        """Check the whole store: the index (``CorruptIndexError``), every frame of the
        log, and that every index entry points at a matching, intact record whose
        LZ4/ZSTD bytes decode to its recorded length (as ``get()`` checks).

        Raises ``CorruptPayloadError`` listing every defect; returns None if all is well.
        Puts and deletes from other threads wait until it is done.
        """
        with self._writers_paused():
            self._verify_locked()

    def _verify_locked(self) -> None:
        g = self._live()
        verify_generation(g, self._data_end(g), self._reader.read)

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
        if not isinstance(salvage, bool):
            raise TypeError(f"salvage must be a bool, not {type(salvage).__name__}")
        progress = self._fork_checked(progress)
        with self._maintenance, self._write_lock:
            g = self._writable()
            self.last_salvage = None
            self._save_locked(g)
            index_gen = g.index_gen + 1
            index_path = self._dir.path(fmt.index_name(index_gen))
            end = self._end
            index, report = build_index(self._dir, index_path, g.fd, end, g.data_path,
                                                 progress, salvage=salvage, old_index=g.index)
            committed = False
            try:
                if self._end != end:
                    # ``progress`` wrote (the writer lock is reentrant): the
                    # frames it appended are indexed too, or they would be lost.
                    final, _ = fmt.replay(g.fd, end, self._end, g.data_path)
                    apply_final(index, final)
                    index.save()
                self._write_manifest(g.data_gen, index_gen)
                committed = True
            finally:
                # The rename is the commit (as in compact()): once the MANIFEST
                # names the new index, switch to it even if what followed raised.
                if committed or self._dir.read_manifest() == (g.data_gen, index_gen):
                    self._gen = new = Generation(g.data_gen, index_gen, g.data_path, index_path,
                                                  os.dup(g.fd), index)
                    if committed:
                        unlink(g.index_path, g.index_path + ".lock")
                else:
                    index.close()
            if report is not None:
                self.last_salvage = report
                if report.keys:
                    for key in report.keys:
                        frame = fmt.tombstone(key)
                        self._append(new, (frame[:4], frame[4:]), fmt.FRAME_SIZE)
                    self._save_locked(new)
            return len(index)

    def _fork_checked(self, progress: "Callable[[int, int], Any] | None",
                      ) -> "Callable[[int, int], Any] | None":
        """``progress``, then a check that it did not fork: a child going on
        with the parent's maintenance would write files the parent is writing."""
        if progress is None:
            return None

        def checked(done: int, total: int) -> Any:
            got = progress(done, total)
            if self._forked:
                raise self._closed_error()
            return got
        return checked

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
        if self._forked:        # before the lazy import (see put_many)
            raise self._closed_error()
        from diskhash._store.compact import compact
        compact(self, salvage)


def _indexed_prefix(index: DiskHashIndex, rows: "list[tuple[int, int]]") -> int:
    """How many of ``rows`` (key, payload offset), indexed in order, ``index``
    holds: the last row whose key points at its offset ends the prefix (a key
    repeated later in the rows points at a later row once that is indexed)."""
    for i in range(len(rows) - 1, -1, -1):
        key, offset = rows[i]
        try:
            meta = index.get(key)
        except Exception:           # a bad key (never indexed) or a closed index
            continue
        if meta is not None and meta.offset == offset:
            return i + 1
    return 0


def _still_there(index: DiskHashIndex, key: int) -> bool:
    try:
        return key in index
    except Exception:               # a closed index: the delete did not happen
        return True


def _frame_rows(keys: "list[int]", lengths: "Iterable[int]", start: int) -> "list[tuple[int, int]]":
    """(key, payload offset) of uncompressed frames of these payload lengths laid out from ``start``."""
    rows = []
    pos = start
    for key, length in zip(keys, lengths):
        rows.append((key, pos + fmt.FRAME_SIZE))
        pos += fmt.FRAME_SIZE + length
    return rows


def _insert_rows(index: DiskHashIndex, rows: "list[tuple[int, int, int, int, int]]", base: int) -> None:
    """Index ``rows`` of (key, offset - base, length, compression, ulen) in order
    (a later duplicate wins): one ``insert_many`` where numpy is installed."""
    np = _numpy() if len(rows) >= 64 else None
    if np is None:
        for key, off, n, comp, ulen in rows:
            index.insert(key, (key, off + base, n, comp, ulen))
        return
    from diskhash._index import dtypes as _dtypes
    keys, offs, lens, comps, ulens = zip(*rows)
    karr = np.empty(len(rows), dtype=_dtypes.KEY_DTYPE)
    if max(keys) <= _MASK64:
        karr["lo"] = keys
        karr["hi"] = 0
    else:
        karr["lo"] = [k & _MASK64 for k in keys]
        karr["hi"] = [k >> 64 for k in keys]
    recs = np.empty(len(rows), dtype=_dtypes.META_DTYPE)
    recs["offset"] = offs
    recs["offset"] += base
    recs["length"] = lens
    recs["compression"] = comps
    recs["uncompressed_length"] = ulens
    index.insert_many(karr, recs)


class InlineReads:
    """The small interface the async twin reads through on its event loop
    (``AsyncPayloadStore``): ``get`` (the compiled call on the store's current
    generation, then ``StoreReader.read_inline``), ``read``, ``live`` and the
    message of an iteration a compaction cut short."""

    __slots__ = ("_store", "_verify", "_read_inline", "read", "live")

    def __init__(self, store: PayloadStore) -> None:
        self._store = store
        self._verify = store._verify
        self._read_inline = store._reader.read_inline
        self.read = store._reader.read
        self.live = store._live

    def get(self, edge_id: Any, default: Any, limit: int) -> Any:
        """The payload, ``default``, or a ``ReadLater`` (over ``limit`` stored bytes)."""
        g = self._store._gen
        if g is not None:
            reader = g.reader
            if reader is not None:          # one compiled call for a record within the limit
                got = reader.get(edge_id, self._verify, limit if limit < BIG_READ else BIG_READ)
                if type(got) is bytes:
                    return got
                if got is None:
                    return default
        return self._read_inline(self.live, edge_id, default, limit)

    def replaced_message(self) -> str:
        return self._store._replaced_message()


def put_many_packed(store: PayloadStore, pieces: "Sequence[tuple[Any, Any, Any]]") -> bool:
    """The sharded build's write path (diskhash/_shards/dask.py): ``pieces`` of
    (keys, ends, data) as packed by ``_shards/packed.py``, appended and indexed
    uncompressed in one pass; False (nothing written) when a piece cannot take
    this path and the caller must use ``put_many``."""
    return store._put_many_packed(pieces)
