"""PayloadStore.compact(): copy the live records into a new generation, then switch.

The layout is generations switched by an atomic rename of a small MANIFEST
(docs/store.md explains the choice):

1. under the writer lock, note the log's end ``e0`` and create
   ``data-<g+1>.dat`` (header only);
2. without the lock (puts, deletes and reads go on): scan the old log up to
   ``e0`` and copy, verbatim, every put frame the index still points at; then
   build the new index in bulk.  A record overwritten or deleted meanwhile is
   skipped or copied - either is right, because step 3 replays the newer frame;
3. catch up: copy the frames written since (puts and tombstones, verbatim) and
   apply them to the new index, a few rounds without the lock, the last
   round under it;
4. under the lock: fdatasync the new data file, save the new index, fsync
   the directory, write the new MANIFEST (fsync, rename, fsync directory),
   swap the store's generation, delete the old files.  Puts wait for step 4
   and the last catch-up round only (``store.last_compaction`` records it);
   the new files were fsynced once before, so step 4's fsyncs are short.

A crash before the MANIFEST rename leaves the old generation, complete (the
new files are leftovers the next writable open deletes); after it, the new
one, complete (everything in it was made durable before the rename).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from diskhash import _payload_format as fmt
from diskhash._files import fsync_dir
from diskhash._index import DiskHashIndex
from diskhash.errors import CorruptPayloadError

if TYPE_CHECKING:
    from diskhash._store import PayloadStore

__all__ = ["compact"]

#: Catch-up rounds without the lock, and the backlog (bytes) small enough to finish under it.
CATCH_UP_ROUNDS = 8
CATCH_UP_SMALL = 1 << 20
WRITE_BATCH = 8 << 20


def compact(store: "PayloadStore") -> dict[str, Any]:
    from diskhash._store import _bulk_insert, _fsync_data, _Generation

    t_start = time.perf_counter()
    with store._maintenance:
        with store._write_lock:
            g = store._writable()
            e0 = store._end
            data_gen, index_gen = g.data_gen + 1, g.index_gen + 1
            data_path = store._path(fmt.data_name(data_gen))
            index_path = store._path(fmt.index_name(index_gen))
            store._unlink(data_path, index_path, index_path + ".lock")
            store._create_data_file(data_gen)
        fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
        new_end = fmt.DATA_HEADER_SIZE
        index: "DiskHashIndex | None" = None
        switched = False
        try:
            # 2. the live records up to e0, verbatim
            built = _copy_live_indexed(g, fd, e0, index_path)
            if built is not None:
                index, copied_bytes, new_end = built
            else:
                live: dict[int, tuple[int, int, int, int]] = {}
                copied_bytes, new_end = _copy_live(g, fd, e0, live)
                index = DiskHashIndex(index_path, capacity=max(len(live), 1), timeout=0.0)
                _bulk_insert(index, live)
                del live

            # 3. catch up with what was written meanwhile
            done = e0
            for _ in range(CATCH_UP_ROUNDS):
                with store._write_lock:
                    # Read under the lock: a put whose insert declines
                    # (_try_put) moves the end past its frame, then back.
                    target = store._end
                if target - done <= CATCH_UP_SMALL:
                    break
                new_end = _catch_up(g, fd, index, done, target, new_end)
                done = target
            if store._sync != "never":
                # The bulk of the new files reaches the disk before writers are
                # stopped: under the lock only the last catch-up is left to sync.
                _fsync_data(fd)
                index.save()
            wait_start = time.perf_counter()
            with store._write_lock:
                if store._gen is not g:
                    raise RuntimeError("the store changed generation during compact()")
                target = store._end
                new_end = _catch_up(g, fd, index, done, target, new_end)
                # 4. durable, then switch
                if store._sync != "never":
                    _fsync_data(fd)
                index.save()
                os.pwrite(fd, fmt.pack_data_header(new_end, fmt.FLAG_DIRTY), 0)
                if store._sync != "never":
                    _fsync_data(fd)
                fsync_dir(store._directory)
                committed = False
                try:
                    store._write_manifest(data_gen, index_gen)
                    committed = True
                finally:
                    # The rename is the commit.  Once the MANIFEST names the new
                    # generation, the store switches to it even if what followed
                    # the rename raised (Ctrl-C during the directory fsync): else
                    # this process writes on into files the next open deletes.
                    # The old files then stay, for that open to remove.
                    if committed or store._read_manifest() == (data_gen, index_gen):
                        switched = True
                        store._gen = _Generation(data_gen, index_gen, data_path, index_path, fd, index)
                        store._end = new_end
                        store._checkpoint = new_end
                        if committed:
                            store._unlink(g.data_path, g.index_path, g.index_path + ".lock")
            waited = time.perf_counter() - wait_start
        except BaseException:
            if not switched:
                if index is not None:
                    index.close()
                os.close(fd)
                store._unlink(data_path, index_path, index_path + ".lock")
            raise
    report = {
        "seconds": time.perf_counter() - t_start,
        "puts_waited_seconds": waited,
        "old_bytes": e0,
        "new_bytes": new_end,
        "copied_bytes": copied_bytes,
    }
    store.last_compaction = report
    return report


def _refuse_early_end(g: Any, result: "fmt.ScanResult", e0: int) -> None:
    """Every frame before ``e0`` (the end a pass reads to: step 2's, or a
    catch-up's) was whole when this store wrote or opened it:
    a pass that stops short of ``e0`` met a record damaged since, at the end
    of the log.  Refused as ``rebuild_index`` refuses it -- copying what came
    before would drop that record's key from the index without a word (its
    get raised ``CorruptPayloadError``; after the switch it would be absent)."""
    if result.end < e0:
        raise CorruptPayloadError(g.data_path, "log ends early while compacting", offset=result.end)


def _copy_live(g: Any, fd: int, e0: int, live: dict[int, tuple[int, int, int, int]]) -> tuple[int, int]:
    """Copy every put frame of the old log before ``e0`` that the old index still
    points at into the new data file ``fd``; fills ``live``; (bytes copied, new end)."""
    get = g.index.get
    state = {"new_end": fmt.DATA_HEADER_SIZE, "written": fmt.DATA_HEADER_SIZE, "copied": 0}
    pending: list[bytes] = []

    if _copy_live_c is not None:
        def parse(buf: bytes, p: int, base: int) -> int:
            stop, state["new_end"] = _copy_live_c(buf, p, base, get, pending, live, state["new_end"])
            return int(stop)
    else:  # pragma: no cover - a build without the compiled module
        def parse(buf: bytes, p: int, base: int) -> int:
            avail = len(buf)
            while True:
                got = fmt._frame_at(buf, p, avail)
                if got is None:
                    return p
                kind, comp, slen, ulen, key, end = got
                m = get(key) if kind == fmt.KIND_PUT else None
                if m is not None and m.offset == base + p + fmt.FRAME_SIZE:
                    pending.append(bytes(buf[p:end]))
                    live[key] = (state["new_end"] + fmt.FRAME_SIZE, slen, comp, ulen)
                    state["new_end"] += end - p
                p = end

    for item in fmt._walk(g.fd, fmt.DATA_HEADER_SIZE, e0, g.data_path, parse):
        if item is None and state["new_end"] - state["written"] >= WRITE_BATCH:
            state["written"] = _write(fd, pending, state["written"])
            pending.clear()
        elif item is not None:
            _refuse_early_end(g, item, e0)
    if pending:
        state["written"] = _write(fd, pending, state["written"])
    assert state["written"] == state["new_end"]
    return state["new_end"] - fmt.DATA_HEADER_SIZE, state["new_end"]


try:
    from diskhash._store_read import RowLog as _RowLog
    from diskhash._store_read import copy_live as _copy_live_c
    from diskhash._store_read import copy_live_into as _copy_live_into
except ImportError:  # pragma: no cover
    _copy_live_c = None  # type: ignore[assignment]
    _copy_live_into = None  # type: ignore[assignment]
    _RowLog = None  # type: ignore[assignment,misc]


def _copy_live_indexed(g: Any, fd: int, e0: int,
                       index_path: str) -> "tuple[DiskHashIndex, int, int] | None":
    """``_copy_live`` in C, then the new index: the live frames, read through a
    map of the old log, gathered into one buffer (written every ``WRITE_BATCH``
    bytes), their new places kept in a ``RowLog`` (in log order: each key
    once) and indexed with one ``insert_many``.  Returns (index, bytes copied, new end), or None where
    the compiled module or numpy is missing."""
    from diskhash._store import _numpy
    np = _numpy() if _copy_live_into is not None else None
    if np is None:
        return None
    from diskhash import _dtypes
    live = _RowLog()
    out = bytearray(WRITE_BATCH + (1 << 20))
    state = {"used": 0, "new_end": fmt.DATA_HEADER_SIZE, "written": fmt.DATA_HEADER_SIZE}
    index = g.index

    def parse(buf: bytes, p: int, base: int) -> int:
        stop, state["used"], state["new_end"] = _copy_live_into(
            buf, p, base, index, out, state["used"], live, state["new_end"])
        return int(stop)

    def flush() -> None:
        from diskhash._store import _write_all
        with memoryview(out) as view:
            state["written"] = _write_all(fd, [view[:state["used"]]], state["written"])
        state["used"] = 0

    # The old log read through a map (no pread copies): its frames before e0
    # never change, and the file never shrinks while the store is open.
    with fmt.mapped_reader(g.fd, fmt.DATA_HEADER_SIZE, e0) as read:
        for item in fmt._walk(g.fd, fmt.DATA_HEADER_SIZE, e0, g.data_path, parse, read=read):
            if item is None and state["used"] >= WRITE_BATCH:
                flush()
            elif item is not None:
                _refuse_early_end(g, item, e0)
    if state["used"]:
        flush()
    assert state["written"] == state["new_end"]
    key_rows, meta_rows = live.rows()
    new = DiskHashIndex(index_path, capacity=max(live.live, 1), timeout=0.0)
    try:
        if live.live:
            new.insert_many(np.frombuffer(key_rows, dtype=_dtypes.KEY_DTYPE),
                            np.frombuffer(meta_rows, dtype=_dtypes.META_DTYPE))
    except BaseException:
        new.close()
        raise
    return new, state["new_end"] - fmt.DATA_HEADER_SIZE, state["new_end"]


def _write(fd: int, pending: list[Any], offset: int) -> int:
    from diskhash._store import _write_all
    return _write_all(fd, [b"".join(pending)], offset)


def _catch_up(g: Any, fd: int, index: DiskHashIndex, start: int, end: int, new_end: int) -> int:
    """Copy the old log's frames in [start, end) to the new file and apply them to ``index``."""
    from diskhash._store import _apply

    if end <= start:
        return new_end
    final: dict[int, "tuple[int, int, int, int] | None"] = {}
    pending: list[Any] = []
    pos = new_end
    for item in fmt.scan(g.fd, start, end, g.data_path, raw=True):
        if not isinstance(item, fmt.Frame):
            _refuse_early_end(g, item, end)
            continue
        if item.kind == fmt.KIND_PUT:
            final[item.key] = (pos + fmt.FRAME_SIZE, item.stored_length, item.compression,
                               item.uncompressed_length)
        else:
            final[item.key] = None
        pending.append(bytes(item.raw))         # type: ignore[arg-type]
        pos += fmt.FRAME_SIZE + item.stored_length
    new_end = _write(fd, pending, new_end)
    _apply(index, final)
    return new_end
