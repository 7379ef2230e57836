"""The store's write side: the log's end, appends, their one undo, put, put_many, delete, save.

Every write enters through one door, ``with writer as g:`` (``WriterDoor.__enter__``,
compiled in ``_store/write.pyx`` so that Ctrl-C cannot leave its lock held):
it takes the in-process writer lock, checks that the store is writable
(read-only, closed, inherited across fork raise before a byte is written),
and -- the store shared between processes -- takes the cross-process
writer lock of the shared page and brings this writer up to what other
processes wrote (the generation, the log's end; a dead holder's write put
right first).  Leaving it publishes the log's end.  ``with writer.nowait()
as g:`` is the same door without waiting (the async inline put).

An append writes a frame at the log's end, then the index takes it.  When the
index does not (an error, Ctrl-C), the frames it did not take are zeroed and
the log's end moves back over them: one undo (``_undo_unindexed`` /
``_undo_append``) for every put and put_many route, so no open ever replays
a frame the index refused, and none leaves a hole before whole frames.
"""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Sequence

from diskhash._format import payload as fmt
from diskhash._index.table import DiskHashIndex, try_insert
from diskhash._store import codecs as _codecs
from diskhash._store.generation import (
    Generation,
    StoreDirectory,
    allocate_blocks,
    fsync_data,
    keep_resident,
    populate_pages,
    write_all,
    write_header,
)
from diskhash._store.keys import MASK64, key_int, numpy_or_none, pair_keys
from diskhash._store.shared import SharedPage
from diskhash._store.sharing import Sharing, reader_end
from diskhash._store.write import WriterDoor
from diskhash._store.write import encode_frames as _encode_frames
from diskhash._store.write import encode_frames_packed as _encode_frames_packed
from diskhash._store.write import encode_frames_u128 as _encode_frames_u128
from diskhash._store.write import put_frame as _put_frame
from diskhash._types import PayloadMeta
from diskhash.errors import ReadOnlyIndexError

__all__ = ["Writer", "ALLOC_MIN", "ALLOC_MAX", "PUT_MANY_CHUNK", "PUT_MANY_RESERVE", "PACKED_CHUNK",
           "PACKED_OVERLAP"]

#: The data file grows by this fraction of its size (at least ALLOC_MIN, at most
#: ALLOC_MAX bytes), allocated for real, so appends do not fail half-way on a full disk.
ALLOC_MIN = 1 << 20
ALLOC_MAX = 16 << 20
#: put_many writes its frames in pieces of about this many bytes (then indexes them).
PUT_MANY_CHUNK = 16 << 20
#: put_many of at least this many records sizes the index for all of them first.
PUT_MANY_RESERVE = 4096
#: The packed path (Arrow payloads, the sharded build) encodes its frames in
#: pieces of about this many bytes: a piece small enough to stay in the CPU's
#: cache between the encoding and the ``pwrite`` that copies it to the page
#: cache (a 16 MiB piece is read back from memory; docs/guide/batch.md).
PACKED_CHUNK = 1 << 20
#: A packed ``put_many`` of at least this many pieces encodes the next piece in
#: a worker thread while it writes and indexes the current one.
PACKED_OVERLAP = 4


def encode_frame(key: int, view: Any, comp: int) -> tuple[bytes, bytes, int, int, int]:
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
    rest = fmt.FRAME_BODY.pack(fmt.KIND_PUT, used, fmt.FRAME_MARK, slen, n, key & MASK64, key >> 64) + stored
    return fmt.checksum(rest).to_bytes(4, "little"), rest, used, slen, n


class Writer(WriterDoor):
    """The write side of one open store: the current generation, the log's
    end and checkpoint, the writer lock, and every write path with its undo.

    ``gen`` is the store's current generation (None once closed): readers
    take a local reference to it for one call; only the writer, under its
    lock, replaces it (``switch``: ``compact()``, ``rebuild_index()``).
    ``closed_error`` makes the exception of a closed (or forked) store.

    The door, ``with writer as g:`` (and ``with writer.nowait() as g:``), is
    ``WriterDoor``'s (``_store/write.pyx``): it takes ``lock`` and returns
    ``writable()``, compiled so that Ctrl-C cannot leave the lock held.
    """

    def __init__(self, *, compression: int, fsync: bool, readonly: bool, directory: str,
                 closed_error: Callable[[], Exception], files: "StoreDirectory | None" = None,
                 page: "SharedPage | None" = None) -> None:
        self.gen = None     # (until ``opened``; gen, end and checkpoint are WriterDoor's fields)
        self.end = 0
        self.checkpoint = 0
        #: What this writer shares with other processes (None: no shared page).
        self.sharing = None if page is None or files is None else Sharing(page, files)
        #: Writes since the last save (the sync thread saves only then).
        self.unsaved = False
        self.lock = threading.RLock()
        self.compression = compression
        #: False with ``sync="never"``: saves record the checkpoint, never fsync.
        self.fsync = fsync
        self.readonly = readonly
        self.directory = directory
        self.closed_error = closed_error
        self.resident_index: "int | None" = None     # (the store's: see ``keep_resident``)

    def writable(self) -> Generation:
        """The writable generation, else ``ReadOnlyIndexError`` or the closed store's error."""
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.directory}: store was opened read-only")
        g = self.gen
        if g is None:
            raise self.closed_error()
        return g

    def opened(self, g: Generation, end: int, checkpoint: int, seen: int = 0) -> None:
        """The generation an open found, its log's end and checkpoint, and the
        page's ``seq`` before its MANIFEST was read."""
        self.gen, self.end, self.checkpoint = g, end, checkpoint
        if self.sharing is not None:
            self.sharing.opened(g, seen)

    # -- other processes ----------------------------------------------------------------------

    def current(self) -> Generation:
        """The current generation, opened first if another process switched it."""
        g = self.gen
        if g is None:
            raise self.closed_error()
        sharing = self.sharing
        return sharing.follow(self) if sharing is not None and sharing.behind() else g

    def switch(self, g: Generation, end: int, checkpoint: int) -> None:
        """Make ``g`` current (``compact()``, ``rebuild_index()``), its log ending at
        ``end``, durable to ``checkpoint``: the lock held, the MANIFEST renamed."""
        keep_resident(g, self.resident_index)
        with nullcontext() if self.sharing is None else self.sharing.follow_lock:
            self.gen, self.end, self.checkpoint = g, end, checkpoint

    # -- appends and their undo ----------------------------------------------------------------

    def append(self, g: Generation, buffers: Sequence[Any], size: int) -> int:
        """Append one frame, given as (its 4 checksum bytes, the rest), at the end
        of the log; returns where it starts.

        The bytes are copied into the writer's shared map of the file (no
        system call), into blocks ``allocate`` reserved beforehand: a full
        disk fails there, before anything is written, never as a SIGBUS.
        They reach the page cache at once (a killed process loses nothing)
        and the disk at ``save()``.  The rest of the frame is copied first and
        its checksum last, each frame after the one before: ``memcpy`` may
        store the end of a buffer before its start, so one copy of many frames
        killed midway could leave a hole with whole frames after it.
        """
        start = self.end
        end = start + size
        if end > g.alloc:
            self.allocate(g, end)
        view = g.view
        if view is None or end > len(view):
            view = g.remap()
        ck, rest = buffers
        view[start + 4:end] = rest
        view[start:start + 4] = ck
        self.end = end
        self.unsaved = True
        return start

    def append_frames(self, g: Generation, blob: "bytes | memoryview") -> int:
        """Append many whole frames with one ``pwrite``: the kernel copies in
        file order and stops between pages on SIGKILL, so a crash leaves a prefix
        of the frames (the last one possibly torn), never a hole."""
        start = self.end
        end = start + len(blob)
        if end > g.alloc:
            self.allocate(g, end, populate=False)      # pwrite fills the pages itself
        try:
            write_all(g.fd, (blob,), start)
            # (in the try: Ctrl-C between the pwrite and this line would leave
            # the frames written past an end the next append writes over)
            self.end = end
            self.unsaved = True
        except BaseException:
            # Some frames may be written (Ctrl-C right after the pwrite, an I/O
            # error after a short one): zero them, or the next append's shorter
            # frames would leave whole ones after a torn one -- damage in the
            # middle of the log, which a writable open then refuses.  (The end
            # stays past them if the zeroing does not happen.)
            self.end = end
            self.undo_append(g, start, end)
            raise
        return start

    def allocate(self, g: Generation, end: int, populate: bool = True) -> None:
        """Allocate the file's blocks to past ``end`` and map them (ENOSPC here, nothing
        written); with ``populate``, fault the new pages in for writes through the map."""
        want = end + min(max(end // 8, ALLOC_MIN), ALLOC_MAX)
        try:
            allocate_blocks(g.fd, g.alloc, want)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            allocate_blocks(g.fd, g.alloc, end)     # the last few bytes may still fit
            want = end
        old = g.alloc
        g.alloc = max(want, os.fstat(g.fd).st_size)
        g.remap()
        if populate:
            populate_pages(g.map, g.fd, old, g.alloc)

    def undo_append(self, g: Generation, start: int, end: int) -> None:
        """Forget an append whose indexing failed: zero it, so no open replays it.

        The log's end moves back to ``start`` only once the zeros are there
        (read back, so that Ctrl-C landing around the write cannot split the
        two): an end moved back over frames left whole would let the next,
        shorter append leave valid frames after a torn one, and zeros left
        before the end are a hole in the middle of the log.  Either is damage
        a writable open refuses."""
        try:
            write_all(g.fd, (bytes(end - start),), start)
        except OSError:  # pragma: no cover - a dead disk; the frames stay unindexed
            pass
        finally:
            try:
                if os.pread(g.fd, fmt.FRAME_SIZE, start).count(0) == fmt.FRAME_SIZE:
                    self.end = start
            except OSError:  # pragma: no cover
                pass

    def undo_unindexed(self, g: Generation, end: int, rows: "list[tuple[int, int]]") -> None:
        """``undo_append`` for the frames the index did not take, after indexing
        raised: ``rows`` (key, payload offset) are the frames up to ``end``, indexed
        in order.  An exception is not proof that nothing was indexed: Ctrl-C
        lands at the next bytecode, after the call returned, and an
        ``insert`` loop may stop midway.  Zeroing an indexed frame would
        leave its key pointing at whatever the next append writes there, so
        the indexed prefix stays (the log's end after it) and the rest is zeroed."""
        kept = _indexed_prefix(g.index, rows)
        if kept < len(rows):
            self.undo_append(g, rows[kept][1] - fmt.FRAME_SIZE, end)
        else:
            self.end = end
            self.unsaved = True

    # -- put -------------------------------------------------------------------------------

    #: ``encode_frame``: one frame's bytes (no writer state).
    encode = staticmethod(encode_frame)

    def put_bytes(self, edge_id: int, payload: bytes) -> "PayloadMeta | None":
        """``put`` of uncompressed ``bytes`` (at most ``MAX_LENGTH``) written into
        the map and indexed in one compiled call (``_store.write.put_frame``: the
        order and undo of ``append`` + ``insert``); None, nothing written, where
        that call cannot be used (the index not the compiled one): take ``put``.

        The hottest write: one compiled call between the door's two."""
        if _put_frame is None:
            return None
        with self as g:
            if type(g.index) is not DiskHashIndex:
                return None
            start = self.end
            end = start + fmt.FRAME_SIZE + len(payload)
            if end > g.alloc:
                key_int(edge_id)               # a bad key raises before the file grows
                self.allocate(g, end)
            view = g.view
            if view is None or end > len(view):
                view = g.remap()
            try:
                meta: PayloadMeta = _put_frame(g.index, view, start, edge_id, payload)
            except BaseException:
                # (put_frame zeroes a frame it could not index; one it did index, with
                # Ctrl-C landing as it returned, is kept)
                if type(edge_id) is int and _indexed_prefix(g.index, [(edge_id, start + fmt.FRAME_SIZE)]):
                    self.end = end
                    self.unsaved = True
                raise
            self.end = end
            self.unsaved = True
            return meta

    def put(self, key: int, view: Any, comp: int) -> PayloadMeta:
        """Append ``view`` as ``key``'s record (compressed with ``comp`` if that
        makes it smaller) and index it; undone if the index does not take it."""
        ck, rest, used, slen, n = self.encode(key, view, comp)
        with self as g:
            start = self.append(g, (ck, rest), fmt.FRAME_SIZE + slen)
            meta = PayloadMeta(key, start + fmt.FRAME_SIZE, slen, used, n)
            try:
                g.index.insert(key, meta)
            except BaseException:
                self.undo_unindexed(g, start + fmt.FRAME_SIZE + slen, [(key, meta.offset)])
                raise
            return meta

    def try_put(self, key: int, view: memoryview, compression: Any) -> "PayloadMeta | None":
        """``put`` if it can finish without waiting: the writer lock free, no index
        grow, no generation to follow; else None, nothing written (the async inline lane)."""
        if self.gen is not None and self.sharing is not None and self.sharing.behind():
            return None
        comp = self.compression if compression is None else _codecs.require(compression)
        ck, rest, used, slen, n = self.encode(key, view, comp)
        # The door without waiting: its lock only if free, then its check.
        with self.nowait() as g:
            if g is None:
                return None
            if self.end + fmt.FRAME_SIZE + slen > g.alloc:
                return None         # the file must grow: a worker thread does that
            start = self.append(g, (ck, rest), fmt.FRAME_SIZE + slen)
            meta = PayloadMeta(key, start + fmt.FRAME_SIZE, slen, used, n)
            done = False
            try:
                done = try_insert(g.index, key, meta)
            except BaseException:
                self.undo_unindexed(g, start + fmt.FRAME_SIZE + slen, [(key, meta.offset)])
                raise
            if not done:
                self.undo_append(g, start, start + fmt.FRAME_SIZE + slen)
            return meta if done else None

    # -- put_many --------------------------------------------------------------------------------

    def compiled_batches(self, comp: int, total: int) -> Any:
        """numpy, when ``put_many`` of ``total`` records with ``comp`` takes the
        compiled path (``put_many_frames``); else None (``put_many``)."""
        return numpy_or_none() if comp == 0 and total >= 64 and _encode_frames is not None else None

    def put_many(self, keys: "list[int] | None", pairs: Any, views: "list[Any]", comp: int) -> None:
        """Append and index ``views`` under ``keys`` (or the (low, high) uint64
        ``pairs`` of a key array when ``keys`` is None), ``PUT_MANY_CHUNK``
        bytes of frames at a time, each piece written with one ``pwrite`` and
        then indexed; a piece the index does not take is undone."""
        total = len(views)
        if keys is None:
            keys = pair_keys(pairs, 0, total)
        encode = self.encode
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
            with self as g:
                start = self.end
                try:
                    self.append_frames(g, blob)        # (in the try: see _append_indexed)
                    _insert_rows(g.index, rows, start)
                except BaseException:
                    if self.end != start:
                        self.undo_unindexed(g, start + size, [(r[0], r[1] + start) for r in rows])
                    raise

    def put_many_frames(self, keys: "list[int] | None", pairs: Any, views: "list[Any]",
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
        or a list of uint64 arrays of (low, high) pairs.  Then the table is
        faulted in for writing in one call if the batch will write nearly
        every page (``prepare_inserts``: a grown table's pages are clean after
        its msync, and each first insert into one took a fault of its own)."""
        if total >= PUT_MANY_RESERVE:
            with self as g:
                index = g.index
                if not len(index):
                    new = total         # (all new; a key repeated in the batch only over-sizes)
                elif keys and not isinstance(keys[0], int):
                    from diskhash._index import dtypes as _dtypes
                    new = sum(len(p) // 2 - int(index.contains_many(p.view(_dtypes.KEY_DTYPE)).sum())
                              for p in keys)
                else:
                    new = sum(1 for k in keys if k not in index)
                index.reserve(len(index) + new)
                if type(index) is DiskHashIndex:
                    from diskhash._index.batch import prepare_inserts
                    prepare_inserts(index, total)

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
        # (the views released, not left to the refcount: see write_all)
        with memoryview(buf) as whole, whole[:size] as blob, self as g:
            start = self.end
            try:
                # (the append in the try: Ctrl-C after it returned, before a
                # try, would leave its frames unindexed for an open to replay)
                self.append_frames(g, blob)
                recs["offset"] += start
                g.index.insert_many(karr, recs)
            except BaseException:
                if self.end != start:      # written (a failed append undoes itself)
                    rows = _frame_rows(pair_keys(karr.view(np.uint64), 0, len(karr)),
                                       recs["length"].tolist(), start)
                    self.undo_unindexed(g, start + size, rows)
                raise

    def put_many_packed(self, pieces: "Sequence[tuple[Any, Any, Any]]") -> bool:
        """``put_many`` of records already packed, uncompressed: each piece a
        ``(keys, ends, data)`` triple -- a ``KEY_DTYPE`` array, the ``int64``
        end offset of each payload in ``data``, and the payload bytes back to
        back (an Arrow binary array's buffers: ``_store/arrow.py``, which the
        sharded build's shard writers use too).  No Python object per record.  Returns False, having written
        nothing, when the store compresses by default or the compiled module
        or numpy is missing (the caller then takes ``put_many``); raises
        ``TypeError``/``ValueError`` for keys or ends that do not fit, before
        anything is written."""
        np = numpy_or_none()
        if self.compression or np is None or _encode_frames is None:
            return False
        from diskhash._index import dtypes as _dtypes
        with self:
            pass                    # (a read-only or closed store raises here)
        prepared, total = _packed_pieces(pieces, np, _dtypes.KEY_DTYPE)
        _write_packed(self, prepared, total, np)
        return True

    # -- delete ---------------------------------------------------------------------------------

    def delete(self, key: int) -> bool:
        with self as g:
            return self.delete_locked(g, key)

    def delete_locked(self, g: Generation, key: int) -> bool:
        """A tombstone for ``key``, then its index entry removed (the lock held);
        whether it was there.  The tombstone is undone if the delete did not happen."""
        if key not in g.index:
            return False
        frame = fmt.tombstone(key)
        start = self.append(g, (frame[:4], frame[4:]), fmt.FRAME_SIZE)
        try:
            g.index.delete(key)
        except BaseException:
            if _still_there(g.index, key):     # (not after Ctrl-C landed as delete returned)
                self.undo_append(g, start, start + fmt.FRAME_SIZE)
            raise
        return True

    def tombstones(self, g: Generation, keys: Iterable[int]) -> None:
        """A tombstone for each of ``keys`` (not in the index: a salvaging
        rebuild dropped them), then saved, so no later rebuild brings them back."""
        for key in keys:
            frame = fmt.tombstone(key)
            self.append(g, (frame[:4], frame[4:]), fmt.FRAME_SIZE)
        self.save_locked(g)

    # -- durability -----------------------------------------------------------------------------

    def save(self) -> None:
        with self as g:
            self.save_locked(g)

    def save_locked(self, g: Generation) -> None:
        """fdatasync the data, save the index, then record the checkpoint (the lock held)."""
        end = self.end
        if self.fsync:
            if g.map is not None:
                g.map.flush()           # msync: the appends made through the map
            fsync_data(g.fd)
            # (sync="never": the index's writes are in the page cache, which
            # a process crash keeps; its msync is an fsync, skipped too)
            g.index.save()
        if end != self.checkpoint:
            self.write_header(g.fd, end, fmt.FLAG_DIRTY, sync=True)
            self.checkpoint = end
        self.unsaved = False

    def finish(self, g: Generation) -> None:
        """``close()``'s writes (the lock held): save, give back the unused
        allocation, mark the data file clean."""
        self.save_locked(g)
        os.ftruncate(g.fd, self.end)
        self.write_header(g.fd, self.end, 0, sync=True)

    def data_end(self, g: Generation) -> int:
        """Where the log ends: the writer knows; a read-only store: ``reader_end``."""
        return reader_end(self.sharing, g) if self.readonly else self.end

    def paused(self) -> Any:
        """The door, held while a walk of the index runs (another thread's or
        process's write would end it: ``RuntimeError``); none when read-only."""
        return nullcontext() if self.readonly else self

    def write_header(self, fd: int, checkpoint: int, flags: int, sync: bool) -> None:
        write_header(fd, checkpoint, flags, sync and self.fsync)


def _write_packed(writer: Writer, prepared: "list[tuple[Any, Any, Any]]", total: int, np: Any) -> None:
    """``Writer.put_many_packed``'s writes, the pieces checked: the index
    sized, then each piece of about ``PACKED_CHUNK`` bytes encoded, written
    and indexed (``Writer._append_indexed``)."""
    chunk = PACKED_CHUNK
    bufs = (bytearray(), bytearray())
    if sum(p[2].nbytes for p in prepared) < PACKED_OVERLAP * chunk:
        writer._reserve_for(total, [p[0] for p in prepared])
        got = _encode_piece(prepared, 0, 0, chunk, bufs[0])
        while got is not None:
            (size, key_rows, meta_rows), at, i = got
            writer._append_indexed(bufs[0], size, key_rows, meta_rows, np)
            got = _encode_piece(prepared, at, i, chunk, bufs[0])
        return
    # Piece k + 1 encoded by a worker thread (into the other buffer, without
    # the GIL: the copy and the CRC) while this thread writes and indexes
    # piece k (pwrite and insert_many, without the GIL too).  The worker
    # never touches the store: the writes, their order and their undo are
    # this thread's, as in the loop above; an error of the worker's is
    # raised here, at the piece it was encoding.
    # (The first piece is encoded while the index is sized and faulted in.)
    with ThreadPoolExecutor(1, thread_name_prefix="diskhash-encode") as worker:
        ahead = worker.submit(_encode_piece, prepared, 0, 0, chunk, bufs[0])
        try:
            writer._reserve_for(total, [p[0] for p in prepared])
        except BaseException:
            ahead.cancel()
            raise
        got = ahead.result()
        k = 0
        while got is not None:
            (size, key_rows, meta_rows), at, i = got
            ahead = worker.submit(_encode_piece, prepared, at, i, chunk, bufs[1 - k])
            try:
                writer._append_indexed(bufs[k], size, key_rows, meta_rows, np)
            except BaseException:
                ahead.cancel()          # (or waited for, as the pool shuts down)
                raise
            got = ahead.result()
            k = 1 - k


def _encode_piece(prepared: "list[tuple[Any, Any, Any]]", at: int, i: int, chunk: int,
                  buf: bytearray) -> "tuple[tuple[int, bytes, bytearray], int, int] | None":
    """The next piece of ``put_many_packed``'s records from record ``i`` of
    ``prepared[at]`` encoded into ``buf``: ((size, key rows, meta rows), where
    the next piece starts (at, i)); None when every record is encoded."""
    while at < len(prepared) and i >= len(prepared[at][1]):
        at, i = at + 1, 0
    if at == len(prepared):
        return None
    pairs, ends, data = prepared[at]
    i_next, size, key_rows, meta_rows = _encode_frames_packed(pairs, ends, data, i, chunk, buf)
    return (size, key_rows, meta_rows), at, i_next


def _packed_pieces(pieces: "Sequence[tuple[Any, Any, Any]]", np: Any,
                   key_dtype: Any) -> "tuple[list[tuple[Any, Any, Any]], int]":
    """``put_many_packed``'s pieces checked and copied, every one before any
    is written: (pairs, ends, data) each, and the records in all."""
    prepared: "list[tuple[Any, Any, Any]]" = []
    total = 0
    for keys, ends, data in pieces:
        if not isinstance(keys, np.ndarray) or keys.dtype != key_dtype or keys.ndim != 1:
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
    return prepared, total


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
    np = numpy_or_none() if len(rows) >= 64 else None
    if np is None:
        for key, off, n, comp, ulen in rows:
            index.insert(key, (key, off + base, n, comp, ulen))
        return
    from diskhash._index import dtypes as _dtypes
    keys, offs, lens, comps, ulens = zip(*rows)
    karr = np.empty(len(rows), dtype=_dtypes.KEY_DTYPE)
    if max(keys) <= MASK64:
        karr["lo"] = keys
        karr["hi"] = 0
    else:
        karr["lo"] = [k & MASK64 for k in keys]
        karr["hi"] = [k >> 64 for k in keys]
    recs = np.empty(len(rows), dtype=_dtypes.META_DTYPE)
    recs["offset"] = offs
    recs["offset"] += base
    recs["length"] = lens
    recs["compression"] = comps
    recs["uncompressed_length"] = ulens
    index.insert_many(karr, recs)
