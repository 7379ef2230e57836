"""PayloadStore.compact(): copy the live records into a new generation, then switch.

The layout is generations switched by an atomic rename of a small MANIFEST
(docs/internals/design.md explains the choice):

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

Damage.  Step 2 passes over a stretch of the old log that is not a valid
frame (a flipped bit, a hole) and goes on at the next valid frame: a damaged
record the index no longer points at (dead) costs nothing, it is dropped.
Then, in step 4 before anything is made durable, every entry of the old
index must be in the new one (a count, then a walk when they differ): an
entry the copy did not reach whose record is intact is copied then; one
whose record is damaged, past the end of the log or another key's makes
``compact()`` refuse with ``DamagedRecordsError`` naming the keys, nothing
changed -- or, with ``salvage=True``, go on without exactly those keys.
``store.last_salvage`` (a ``SalvageReport``) says what was passed over.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

from diskhash._format import payload as fmt
from diskhash._fs.files import fsync_dir
from diskhash._index.table import DiskHashIndex
from diskhash._store.generation import Generation, StoreDirectory, fsync_data, unlink, write_all
from diskhash._store.keys import numpy_or_none
from diskhash._store.read import RowLog as _RowLog
from diskhash._store.read import copy_live as _copy_live_c
from diskhash._store.read import copy_live_into as _copy_live_into
from diskhash._store.recovery import apply_final, bulk_insert
from diskhash._store.writer import Writer
from diskhash._types import SalvageReport
from diskhash.errors import CorruptPayloadError, DamagedRecordsError

__all__ = ["Compacted", "compact"]

#: Catch-up rounds without the lock, and the backlog (bytes) small enough to finish under it.
CATCH_UP_ROUNDS = 8
CATCH_UP_SMALL = 1 << 20
WRITE_BATCH = 8 << 20


class Compacted(NamedTuple):
    """What ``compact()`` did: the generation it switched to, what it measured
    (``PayloadStore.last_compaction``: seconds, puts_waited_seconds, old_bytes,
    new_bytes, copied_bytes) and what it passed over (a ``SalvageReport``, or None)."""
    gen: Generation
    report: "dict[str, Any]"
    salvage: "SalvageReport | None"


def compact(g: Generation, writer: Writer, directory: StoreDirectory,
            write_manifest: Callable[[int, int], None], *, salvage: bool) -> Compacted:
    """Copy the live records of ``g`` (the writer's current generation) into a
    new generation and switch ``writer`` to it (steps 1-4 above).  The caller
    holds the maintenance lock; ``write_manifest`` renames the new MANIFEST
    into place (the commit).  Writes enter through the writer's door."""
    damage = _Damage()
    t_start = time.perf_counter()
    with writer as cur:
        if cur is not g:
            raise RuntimeError("the store changed generation before compact() began")
        e0 = writer.end
        data_gen, index_gen = g.data_gen + 1, g.index_gen + 1
        data_path = directory.path(fmt.data_name(data_gen))
        index_path = directory.path(fmt.index_name(index_gen))
        unlink(data_path, index_path, index_path + ".lock")
        directory.create_data_file(data_gen)
    fd = os.open(data_path, os.O_RDWR | os.O_CLOEXEC)
    new_end = fmt.DATA_HEADER_SIZE
    index: "DiskHashIndex | None" = None
    switched = False
    try:
        # 2. the live records up to e0, verbatim
        built = _copy_live_indexed(g, fd, e0, index_path, damage)
        if built is not None:
            index, copied_bytes, new_end = built
        else:
            live: dict[int, tuple[int, int, int, int]] = {}
            copied_bytes, new_end = _copy_live(g, fd, e0, live, damage)
            index = DiskHashIndex(index_path, capacity=max(len(live), 1), timeout=0.0)
            bulk_insert(index, live)
            del live

        # 3. catch up with what was written meanwhile
        done = e0
        for _ in range(CATCH_UP_ROUNDS):
            with writer as cur:
                # Read under the lock: a put whose insert declines
                # (try_put) moves the end past its frame, then back.
                target = writer.end
            if target - done <= CATCH_UP_SMALL:
                break
            new_end = _catch_up(g, fd, index, done, target, new_end)
            done = target
        if writer.fsync:
            # The bulk of the new files reaches the disk before writers are
            # stopped: under the lock only the last catch-up is left to sync.
            fsync_data(fd)
            index.save()
        wait_start = time.perf_counter()
        with writer as cur:
            if cur is not g:
                raise RuntimeError("the store changed generation during compact()")
            target = writer.end
            new_end = _catch_up(g, fd, index, done, target, new_end)
            new_end, lost = _account(g, fd, index, new_end, target)
            if lost and not salvage:
                raise _refusal(g, lost)
            # 4. durable, then switch
            if writer.fsync:
                fsync_data(fd)
            index.save()
            os.pwrite(fd, fmt.pack_data_header(new_end, fmt.FLAG_DIRTY), 0)
            if writer.fsync:
                fsync_data(fd)
            fsync_dir(directory.directory)
            committed = False
            try:
                write_manifest(data_gen, index_gen)
                committed = True
            finally:
                # The rename is the commit.  Once the MANIFEST names the new
                # generation, the store switches to it even if what followed
                # the rename raised (Ctrl-C during the directory fsync): else
                # this process writes on into files the next open deletes.
                # The old files then stay, for that open to remove.
                if committed or directory.read_manifest() == (data_gen, index_gen):
                    switched = True
                    new = Generation(data_gen, index_gen, data_path, index_path, fd, index)
                    writer.switch(new, new_end, new_end)
                    if committed:
                        unlink(g.data_path, g.index_path, g.index_path + ".lock")
        waited = time.perf_counter() - wait_start
    except BaseException:
        if not switched:
            if index is not None:
                index.close()
            os.close(fd)
            unlink(data_path, index_path, index_path + ".lock")
        raise
    report = {
        "seconds": time.perf_counter() - t_start,
        "puts_waited_seconds": waited,
        "old_bytes": e0,
        "new_bytes": new_end,
        "copied_bytes": copied_bytes,
    }
    found = None
    if lost or damage.frames:
        found = SalvageReport(tuple(sorted(k for k, _, _ in lost)), damage.frames, damage.bytes)
    return Compacted(new, report, found)


class _Damage:
    """The stretches of the old log the copy passed over (not valid frames)."""

    __slots__ = ("frames", "bytes")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0

    def add(self, start: int, end: int) -> None:
        self.frames += 1
        self.bytes += end - start


def _claimed_end(buf: Any, p: int, at: int, end: int) -> int:
    """Where the frame at ``buf[p:]`` (file offset ``at``) ends if it has the
    frame mark and a known kind and fits before ``end``; else -1.  Looser than
    the format's header check on purpose: a damaged header (its length
    changed) that still claims up to a valid frame has that whole stretch
    passed over as one damage, the live records inside it found by ``_account``."""
    if len(buf) - p < fmt.FRAME_SIZE:
        return -1
    _ck, kind, _comp, mark, slen, _ulen, _lo, _hi = fmt.FRAME.unpack_from(buf, p)
    if mark != fmt.FRAME_MARK or kind not in (fmt.KIND_PUT, fmt.KIND_TOMBSTONE):
        return -1
    claimed = at + fmt.FRAME_SIZE + slen
    return claimed if claimed <= end else -1


def _valid_at(fd: int, read: Any, at: int, end: int) -> bool:
    """Whether a whole valid frame starts at ``at`` and ends by ``end`` (the
    format's own check: header first, then the checksum in bounded pieces,
    so a garbage length never makes a read of the bytes it claims)."""
    return fmt.whole_frame_end(fd, at, end, read) >= 0


def _walk_past_damage(fd: int, start: int, end: int, parse: Any, read: Any,
                      damage: _Damage) -> Any:
    """The format's chunked walk over the old log up to ``end`` (every frame before it was
    whole when this store wrote or opened it), except that a stretch that is
    not a valid frame is passed over and recorded in ``damage``: to the end
    its header claims when a valid frame (or ``end``) is there -- a damaged
    payload -- else to the next valid frame found by its mark, else to
    ``end``.  Whatever it held that the index points at is found by
    ``_account``.  Yields None after each parsed piece."""
    pos = start
    while pos < end:
        buf = read(fd, min(fmt.SCAN_CHUNK, end - pos), pos)
        avail = len(buf)
        if not avail:                   # (the file never shrinks while open)
            damage.add(pos, end)
            return
        p = parse(buf, 0, pos)
        yield None
        if p >= avail or (p > 0 and pos + avail < end):
            pos += p                    # (a frame cut by the chunk's end: read on)
            continue
        bad = pos + p
        claimed = _claimed_end(buf, p, bad, end)
        if p == 0 and claimed > pos + avail:
            # One frame bigger than the chunk: read it whole.
            whole = read(fd, claimed - bad, bad)
            if parse(whole, 0, bad) == claimed - bad:
                yield None
                pos = claimed
                continue
        if claimed < 0 or (claimed < end and not _valid_at(fd, read, claimed, end)):
            claimed = fmt.next_frame(fd, bad, end)
            if claimed < 0:
                claimed = end
        damage.add(bad, claimed)
        pos = claimed


def _check_entry(g: Any, key: int, meta: Any, end: int) -> "tuple[str, bytes | None]":
    """The old log's frame that ``meta`` (the old index's entry for ``key``)
    points at, whole, if it is that key's intact record: ("", frame bytes);
    else (what is wrong, None)."""
    start = meta.offset - fmt.FRAME_SIZE
    if start < fmt.DATA_HEADER_SIZE or meta.offset + meta.length > end:
        return (f"its index entry (offset {meta.offset}, length {meta.length}) points "
                f"outside the log ({end} bytes)"), None
    raw = fmt.pread_exact(g.fd, fmt.FRAME_SIZE + meta.length, start)
    got = fmt.frame_at(raw, 0, len(raw))
    if got is None:
        return f"its record at offset {start} is damaged (frame or checksum check fails)", None
    kind, comp, slen, ulen, fkey, _ = got
    if (kind, fkey, slen, comp, ulen) != (fmt.KIND_PUT, key, meta.length, int(meta.compression),
                                          meta.uncompressed_length):
        what = "a tombstone" if kind != fmt.KIND_PUT else f"a record of edge id {fkey:#x}"
        return (f"its index entry does not match the frame at offset {start} ({what}, "
                f"stored length {slen})"), None
    return "", raw


def _account(g: Any, fd: int, new: DiskHashIndex, new_end: int,
             end: int) -> "tuple[int, list[tuple[int, int, str]]]":
    """Every entry of the old index must be in the new one.  Those the copy did
    not reach (their frames were passed over as damage, or the entry does not
    point at a frame boundary) are checked: an intact record is copied now and
    indexed; the rest are returned as (key, frame offset, what is wrong).  The
    writer lock is held, so both indexes hold still; the walk of the old index
    runs only when the counts differ.  Returns (new end, lost)."""

    if len(new) == len(g.index):
        return new_end, []
    lost: "list[tuple[int, int, str]]" = []
    for key, meta in g.index.items():
        if key in new:
            continue
        reason, raw = _check_entry(g, key, meta, end)
        if raw is None:
            lost.append((key, meta.offset - fmt.FRAME_SIZE, reason))
            continue
        new.insert(key, (key, new_end + fmt.FRAME_SIZE, meta.length, meta.compression,
                         meta.uncompressed_length))
        new_end = write_all(fd, [raw], new_end)
    return new_end, lost


def _refusal(g: Any, lost: "list[tuple[int, int, str]]") -> DamagedRecordsError:
    lost = sorted(lost, key=lambda row: row[1])
    defects = [f"compact() refused: {len(lost)} live record(s) cannot be read back and would be "
               f"lost; nothing was changed (rebuild_index() restores index entries whose records "
               f"are intact in the log; compact(salvage=True) drops exactly these keys)"]
    defects += [f"edge id {key:#x}: {reason}" for key, _, reason in lost]
    return DamagedRecordsError(g.data_path, defects, [key for key, _, _ in lost],
                               offset=max(lost[0][1], 0))


def _refuse_early_end(g: Any, result: "fmt.ScanResult", e0: int) -> None:
    """Every frame a catch-up reads (written since step 2's end, by this
    store) was whole when written: a catch-up that stops short of its end met
    a record damaged since, at the end of the log.  Refused -- copying what
    came before would drop that record's key from the index without a word
    (its get raised ``CorruptPayloadError``; after the switch it would be absent)."""
    if result.end < e0:
        raise CorruptPayloadError(g.data_path, "log ends early while compacting", offset=result.end)


def _copy_live(g: Any, fd: int, e0: int, live: dict[int, tuple[int, int, int, int]],
               damage: _Damage) -> tuple[int, int]:
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
                got = fmt.frame_at(buf, p, avail)
                if got is None:
                    return p
                kind, comp, slen, ulen, key, end = got
                m = get(key) if kind == fmt.KIND_PUT else None
                if m is not None and m.offset == base + p + fmt.FRAME_SIZE:
                    pending.append(bytes(buf[p:end]))
                    live[key] = (state["new_end"] + fmt.FRAME_SIZE, slen, comp, ulen)
                    state["new_end"] += end - p
                p = end

    for _ in _walk_past_damage(g.fd, fmt.DATA_HEADER_SIZE, e0, parse, fmt.pread_exact, damage):
        if state["new_end"] - state["written"] >= WRITE_BATCH:
            state["written"] = _write(fd, pending, state["written"])
            pending.clear()
    if pending:
        state["written"] = _write(fd, pending, state["written"])
    assert state["written"] == state["new_end"]
    return state["new_end"] - fmt.DATA_HEADER_SIZE, state["new_end"]




def _copy_live_indexed(g: Any, fd: int, e0: int, index_path: str,
                       damage: _Damage) -> "tuple[DiskHashIndex, int, int] | None":
    """``_copy_live`` in C, then the new index: the live frames, read through a
    map of the old log, gathered into one buffer (written every ``WRITE_BATCH``
    bytes), their new places kept in a ``RowLog`` (in log order: each key
    once) and indexed with one ``insert_many``.  Returns (index, bytes copied, new end), or None where
    the compiled module or numpy is missing."""
    np = numpy_or_none() if _copy_live_into is not None else None
    if np is None:
        return None
    from diskhash._index import dtypes as _dtypes
    live = _RowLog()
    out = bytearray(WRITE_BATCH + (1 << 20))
    state = {"used": 0, "new_end": fmt.DATA_HEADER_SIZE, "written": fmt.DATA_HEADER_SIZE}
    index = g.index

    def parse(buf: bytes, p: int, base: int) -> int:
        stop, state["used"], state["new_end"] = _copy_live_into(
            buf, p, base, index, out, state["used"], live, state["new_end"])
        return int(stop)

    def flush() -> None:
        with memoryview(out) as view:
            state["written"] = write_all(fd, [view[:state["used"]]], state["written"])
        state["used"] = 0

    # The old log read through a map (no pread copies): its frames before e0
    # never change, and the file never shrinks while the store is open.
    with fmt.mapped_reader(g.fd, fmt.DATA_HEADER_SIZE, e0) as read:
        for _ in _walk_past_damage(g.fd, fmt.DATA_HEADER_SIZE, e0, parse, read, damage):
            if state["used"] >= WRITE_BATCH:
                flush()
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
    return write_all(fd, [b"".join(pending)], offset)


def _catch_up(g: Any, fd: int, index: DiskHashIndex, start: int, end: int, new_end: int) -> int:
    """Copy the old log's frames in [start, end) to the new file and apply them to ``index``."""

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
    apply_final(index, final)
    return new_end
