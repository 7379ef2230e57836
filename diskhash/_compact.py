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
   and the last catch-up round only (``store.last_compaction`` records it).

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
from diskhash._records import PayloadMeta

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
            live: dict[int, tuple[int, int, int, int]] = {}
            pending: list[Any] = []
            pending_bytes = 0
            old_index = g.index
            copied_bytes = 0
            for item in fmt.scan(g.fd, fmt.DATA_HEADER_SIZE, e0, g.data_path, raw=True):
                if not isinstance(item, fmt.Frame):
                    continue
                if item.kind != fmt.KIND_PUT:
                    continue
                m = old_index.get(item.key)
                if m is None or m.offset != item.offset + fmt.FRAME_SIZE:
                    continue
                size = fmt.FRAME_SIZE + item.stored_length
                live[item.key] = (new_end + pending_bytes + fmt.FRAME_SIZE, item.stored_length,
                                  item.compression, item.uncompressed_length)
                pending.append(bytes(item.raw))     # type: ignore[arg-type]
                pending_bytes += size
                if pending_bytes >= WRITE_BATCH:
                    new_end = _write(fd, pending, new_end)
                    copied_bytes += pending_bytes
                    pending, pending_bytes = [], 0
            if pending:
                new_end = _write(fd, pending, new_end)
                copied_bytes += pending_bytes
            index = DiskHashIndex(index_path, capacity=max(len(live), 1), timeout=0.0)
            _bulk_insert(index, live)
            del live

            # 3. catch up with what was written meanwhile
            done = e0
            for _ in range(CATCH_UP_ROUNDS):
                target = store._end
                if target - done <= CATCH_UP_SMALL:
                    break
                new_end = _catch_up(g, fd, index, done, target, new_end)
                done = target
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
                store._write_manifest(data_gen, index_gen)
                switched = True
                store._gen = _Generation(data_gen, index_gen, data_path, index_path, fd, index)
                store._end = new_end
                store._checkpoint = new_end
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


def _write(fd: int, pending: list[Any], offset: int) -> int:
    from diskhash._store import _write_all
    return _write_all(fd, [b"".join(pending)], offset)


def _catch_up(g: Any, fd: int, index: DiskHashIndex, start: int, end: int, new_end: int) -> int:
    """Copy the old log's frames in [start, end) to the new file and apply them to ``index``."""
    from diskhash._store import _apply

    if end <= start:
        return new_end
    final: dict[int, "PayloadMeta | None"] = {}
    pending: list[Any] = []
    pos = new_end
    for item in fmt.scan(g.fd, start, end, g.data_path, raw=True):
        if not isinstance(item, fmt.Frame):
            continue
        if item.kind == fmt.KIND_PUT:
            final[item.key] = PayloadMeta(item.key, pos + fmt.FRAME_SIZE, item.stored_length,
                                          item.compression, item.uncompressed_length)
        else:
            final[item.key] = None
        pending.append(bytes(item.raw))         # type: ignore[arg-type]
        pos += fmt.FRAME_SIZE + item.stored_length
    new_end = _write(fd, pending, new_end)
    _apply(index, final)
    return new_end
