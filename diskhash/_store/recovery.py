"""Opening a store: the read-only open, and the writable open that brings the
index to the log -- replay after the checkpoint, the point-in-time cut of a
torn tail, the index rebuilt from the log when it cannot be trusted (also
what ``rebuild_index()`` runs), and which damaged keys a rebuild would lose.

Each open returns an ``Opened``: the ``Generation`` and what it found; the
store keeps them.  docs/internals/design.md explains the recovery rules.
"""

from __future__ import annotations

import errno
import os
from typing import Any, Callable, Iterable, NamedTuple, TypeVar

from diskhash._format import payload as fmt
from diskhash._fs.files import IndexLock, fsync_dir
from diskhash._index.table import DiskHashIndex
from diskhash._store.generation import (
    Generation,
    StoreDirectory,
    fsync_data,
    open_data_fd,
    read_checkpoint,
    unlink,
    write_all,
    write_header,
)
from diskhash._store.keys import MASK64, numpy_or_none
from diskhash._store.read import LogFold
from diskhash._store.shared import SharedPage
from diskhash._types import SalvageReport, StoreRecovery
from diskhash.errors import CorruptIndexError, CorruptPayloadError, DamagedRecordsError

__all__ = ["Opened", "apply_final", "build_index", "bulk_insert", "open_readonly", "open_writable", "open_store",
           "open_generation", "recover_tail", "zero_tail"]

_T = TypeVar("_T")

#: ``zero_tail`` reads and zeroes in pieces of this many bytes.
ZERO_CHUNK = 1 << 20


class Opened(NamedTuple):
    """What an open found: the generation, the log's end and checkpoint, what
    the writable open recovered and what a salvaging rebuild dropped."""
    gen: Generation
    end: int
    checkpoint: int
    recovery: "StoreRecovery | None" = None
    salvage: "SalvageReport | None" = None
    #: The shared page's ``seq`` read before the MANIFEST was (0 without a page).
    seen: int = 0


def _maybe_deleted(fd: int, damages: "list[fmt.Damage]", old_index: "DiskHashIndex | None",
                   rows: Any) -> "dict[int, int]":
    """Keys the rebuilt log holds but ``old_index`` does not, whose last valid
    record lies before a damaged stretch that may hold frames nobody can name
    (its header is unreadable, or the stretch is longer than the frame its
    header claims): their tombstone may be in there, so the rebuild must not
    bring them back silently (a delete made durable long ago would be
    undone).  Maps each to the start of the first such stretch after its
    record.  ``rows``: the rebuilt live state, a dict (key -> (payload
    offset, ...)) or (key rows, meta rows) numpy arrays."""
    import bisect
    anon = [d.start for d in damages if d.key is None or d.end - d.start
            != fmt.claimed_end(fmt.pread_exact(fd, fmt.FRAME_SIZE, d.start), 0)]
    if not anon or old_index is None:
        return {}
    found: "dict[int, int]" = {}
    if isinstance(rows, dict):
        pairs: "Iterable[tuple[int, int]]" = (
            (k, v[0] - fmt.FRAME_SIZE) for k, v in rows.items()
            if v[0] - fmt.FRAME_SIZE < anon[-1] and k not in old_index)
    else:
        keys, metas = rows
        at = metas["offset"].astype("int64") - fmt.FRAME_SIZE
        sel = at < anon[-1]
        keys, at = keys[sel], at[sel]
        if len(keys):
            absent = ~old_index.contains_many(keys)
            keys, at = keys[absent], at[absent]
        pairs = ((int(lo) | (int(hi) << 64), int(a))
                 for lo, hi, a in zip(keys["lo"].tolist(), keys["hi"].tolist(), at.tolist()))
    for key, at in pairs:
        found[key] = anon[bisect.bisect_right(anon, at)]
    return found


def _damaged_live(fd: int, end: int, path: str, damages: "list[fmt.Damage]",
                  old_index: "DiskHashIndex | None",
                  maybe_deleted: "dict[int, int] | None" = None) -> "list[int]":
    """The keys whose newest record lies in one of ``damages`` (``end``: where the
    log ends): named by a damaged frame's plausible header, or by an ``old_index``
    entry pointing into a damaged stretch, and with no valid frame after it;
    and the keys of ``maybe_deleted`` (``_maybe_deleted``), whose tombstone
    may lie in a damaged stretch."""
    import bisect
    newest: "dict[int, int]" = dict(maybe_deleted or {})  # key -> its last damaged record's start
    for d in damages:
        if d.key is not None:
            newest[d.key] = max(newest.get(d.key, -1), d.start)
    if old_index is not None:
        starts = [d.start for d in damages]
        for key, meta in old_index.items():
            at = meta.offset - fmt.FRAME_SIZE
            i = bisect.bisect_right(starts, at) - 1
            if i >= 0 and at < damages[i].end:
                newest[key] = max(newest.get(key, -1), at)
    if not newest:
        return []
    last: "dict[int, int]" = {}
    for item in fmt.scan_resync(fd, damages[0].start, end, path):
        if isinstance(item, fmt.Frame) and item.key in newest:
            last[item.key] = item.offset
    return sorted(k for k, at in newest.items() if last.get(k, -1) < at)


def apply_final(index: DiskHashIndex, final: "dict[int, tuple[int, int, int, int] | None]") -> None:
    """Make ``index`` hold ``final``: key -> (offset, length, compression, ulen), or
    None for absent; inserts in bulk where numpy allows."""
    puts = {}
    for k, v in final.items():
        if v is None:
            index.delete(k)
        else:
            puts[k] = v
    bulk_insert(index, puts)


def bulk_insert(index: DiskHashIndex, records: "dict[int, tuple[int, int, int, int]]") -> None:
    if not records:
        return
    if len(records) < 64:
        for k, (off, n, comp, ulen) in records.items():
            index.insert(k, (k, off, n, comp, ulen))
        return
    try:
        from diskhash._index import dtypes as _dtypes
    except ImportError:
        for k, (off, n, comp, ulen) in records.items():
            index.insert(k, (k, off, n, comp, ulen))
        return
    np = _dtypes.np
    keys = list(records)
    karr = np.empty(len(keys), dtype=_dtypes.KEY_DTYPE)
    karr["lo"] = [k & MASK64 for k in keys]
    karr["hi"] = [k >> 64 for k in keys]
    recs = np.empty(len(keys), dtype=_dtypes.META_DTYPE)
    vals = list(records.values())
    recs["offset"] = [v[0] for v in vals]
    recs["length"] = [v[1] for v in vals]
    recs["compression"] = [v[2] for v in vals]
    recs["uncompressed_length"] = [v[3] for v in vals]
    index.insert_many(karr, recs)


def open_store(directory: str, *, readonly: bool, timeout: "float | None", fsync: bool,
               salvage: bool) -> "tuple[StoreDirectory, IndexLock, SharedPage | None, Opened]":
    """A store's directory opened: made (with its parents) unless ``readonly``,
    its path resolved (symlinks followed), ``store.lock`` joined and its
    shared page mapped, and the open run.  If the open fails, the page and the
    lock are let go before the error propagates.

    Every open holds ``store.lock`` shared (docs/guide/processes.md).  An
    open that finds itself alone recovers the store as a single process
    always did and (writable) sets up the shared page for the opens that
    follow; a writable open beside others attaches to the state the page
    publishes -- or, when no writable open has set the page up since the
    last time the store was unused (only readers have it), does the
    recovery itself, holding the create lock so that writable opens
    arriving together do it once."""
    if readonly:
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, "no PayloadStore directory", directory)
    else:
        os.makedirs(directory, exist_ok=True)
    found = StoreDirectory(os.path.realpath(directory))
    lock = IndexLock(os.path.join(found.directory, "store"), False, timeout, shared=True,
                     readonly=readonly)
    page = None
    try:
        if not readonly:
            lock.join_writers()
        mapping = lock.map_page(not readonly)
        if mapping is not None:
            page = SharedPage(mapping, found.directory)
        if lock.quiet:
            opened = open_readonly(found) if readonly else open_writable(found, fsync=fsync, salvage=salvage)
            opened = _started(page, opened, readonly)
            lock.end_quiet()
        elif readonly or page is None or not page.writable:
            seen = page.seq if page is not None else 0
            opened = switching(found, lambda: open_readonly(found))._replace(seen=seen)
        else:
            with lock.creating():
                if page.live:
                    opened = switching(found, lambda: open_attached(found, page))
                else:
                    opened = open_writable(found, fsync=fsync, salvage=salvage, alone=False)
                    opened = _started(page, opened, False)
    except BaseException:
        if page is not None:
            page.release()
        lock.close()
        raise
    return found, lock, page, opened


#: An open whose generation another process's ``compact()`` or
#: ``rebuild_index()`` deleted meanwhile is tried again this many times.
SWITCH_ATTEMPTS = 8


def switching(directory: StoreDirectory, open_files: "Callable[[], _T]") -> "_T":
    """``open_files()`` (which opens the generation the MANIFEST names), again
    when it failed because a file it named vanished and the MANIFEST names
    another generation now: another process switched generations between
    the MANIFEST's read and the files' open, and deleted the old ones."""
    for attempt in range(SWITCH_ATTEMPTS):
        before = directory.read_manifest()
        try:
            return open_files()
        except (FileNotFoundError, CorruptPayloadError):
            if attempt + 1 == SWITCH_ATTEMPTS or directory.read_manifest() == before:
                raise
    raise AssertionError("unreachable")


def _started(page: "SharedPage | None", opened: Opened, readonly: bool) -> Opened:
    """The shared page set up by the open that recovered the store (``live``),
    or reset by a read-only open alone (no writer's state is current)."""
    if page is None or not page.writable:
        return opened
    if readonly:
        if page.live:
            page.reset()        # (a writer's state of a past session; else nothing is written)
    else:
        g = opened.gen
        page.start(g.data_gen, g.index_gen, opened.end, opened.checkpoint)
    return opened._replace(seen=page.seq)


def open_generation(directory: StoreDirectory, data_gen: int, index_gen: int,
                    writable: bool) -> Generation:
    """The files of a generation another process made current, opened as they
    are (their writer recovered them; nothing is replayed here)."""
    data_path = directory.path(fmt.data_name(data_gen))
    index_path = directory.path(fmt.index_name(index_gen))
    if not os.path.lexists(data_path):
        raise directory.missing_generation(data_path, data_gen, index_gen)
    fd, _header, _size = open_data_fd(data_path, writable)
    try:
        index = DiskHashIndex(index_path, readonly=not writable, timeout=0.0)
    except BaseException:
        os.close(fd)
        raise
    return Generation(data_gen, index_gen, data_path, index_path, fd, index, writable=writable)


def open_attached(directory: StoreDirectory, page: SharedPage) -> Opened:
    """A writable open beside a writable open of another process: the
    generation the MANIFEST names, the log's end as the page publishes it
    (the store's first write lock brings it up to date)."""
    seen = page.seq
    gens = directory.read_manifest()
    if gens is None:
        raise FileNotFoundError(errno.ENOENT, "no PayloadStore here (MANIFEST missing)",
                                directory.manifest_path)
    gen = open_generation(directory, gens[0], gens[1], True)
    return Opened(gen, page.log_end, page.checkpoint, seen=seen)


def recover_tail(g: Generation, start: int) -> int:
    """After a writer died holding the store's writer lock: the valid frames it
    appended after ``start`` (the log's end it last published) are indexed --
    its write is finished, as a reopen would replay it -- and what follows
    them (a torn frame) is zeroed, so the next append cannot leave whole
    frames after a torn one.  Returns the log's new end."""
    size = os.fstat(g.fd).st_size
    start = min(max(start, fmt.DATA_HEADER_SIZE), size)
    final, result = fmt.replay(g.fd, start, size, g.data_path, mode="stop")
    apply_final(g.index, final)
    zero_tail(g.fd, result.end, size)
    return result.end


def zero_tail(fd: int, start: int, size: int, whole: bool = False) -> None:
    """Zero what lies after the log's end at ``start`` (a torn frame, a prefix
    of a batch cut short), up to the end the torn frame's header claims and
    on to the first all-zero piece (the allocated space after the log is
    zeros), or to ``size`` when ``whole``.  Used where ``ftruncate`` could not be: other processes may map
    the file, and a map past a shrunk file's end is SIGBUS."""
    if start >= size:
        return
    head = os.pread(fd, fmt.FRAME_SIZE, start)
    claimed = fmt.claimed_end(head, 0)
    must = start + claimed if claimed > 0 else start
    pos = start
    while pos < size:
        n = min(ZERO_CHUNK, size - pos)
        chunk = os.pread(fd, n, pos)
        if not chunk:
            break
        if chunk.count(0) == len(chunk):
            if pos >= must and not whole:
                break
        else:
            write_all(fd, (bytes(len(chunk)),), pos)
        pos += len(chunk)


def open_readonly(directory: StoreDirectory) -> Opened:
    gens = directory.read_manifest()
    if gens is None:
        raise FileNotFoundError(errno.ENOENT, "no PayloadStore here (MANIFEST missing)",
                                directory.manifest_path)
    data_gen, index_gen = gens
    data_path, index_path = directory.path(fmt.data_name(data_gen)), directory.path(fmt.index_name(index_gen))
    if not os.path.lexists(data_path):
        raise directory.missing_generation(data_path, data_gen, index_gen)
    fd, header, size = open_data_fd(data_path, False)
    try:
        index = DiskHashIndex(index_path, readonly=True, timeout=0.0)
    except BaseException:
        os.close(fd)
        raise
    gen = Generation(data_gen, index_gen, data_path, index_path, fd, index, writable=False)
    return Opened(gen, size, header.checkpoint)

def open_writable(directory: StoreDirectory, *, fsync: bool, salvage: bool, alone: bool = True) -> Opened:
    """Open the generation the MANIFEST names and bring the index to the log.

    Nothing is deleted or cut before that generation's data file has been
    found and read whole.  After an unclean close the log after the
    checkpoint is replayed up to its first invalid frame and cut there
    (point-in-time recovery: a crash leaves a torn record, a power loss
    can leave a hole with whole frames after it); the index is rebuilt
    from the log up to the cut when it cannot be brought there by the
    replay (missing, damaged, pointing past the cut, or a hole cut whole
    frames whose deletes it may hold).  What was done: ``Opened.recovery``.
    ``fsync``: False for ``sync="never"``.  ``alone``: False when read-only
    opens of other processes have the store (they may map the data file, so
    the tail is zeroed instead of cut: a map past a file's end is SIGBUS).
    """
    gens = directory.read_manifest()
    if gens is None:
        stale = [e for e in os.listdir(directory.directory)
                 if (fmt.generation_file(e) or ("",))[0] == "data"
                 and os.path.getsize(directory.path(e)) > fmt.DATA_HEADER_SIZE]
        if stale:
            raise CorruptPayloadError(
                directory.manifest_path,
                f"MANIFEST is missing but data files hold records ({', '.join(sorted(stale))}); "
                f"restore the manifest (see docs/internals/store-format.md) rather than start over")
        directory.remove_leftovers(0, 0)
        directory.create_data_file(1)
        directory.write_manifest(1, 1)
        gens = (1, 1)
    data_gen, index_gen = gens
    data_path, index_path = directory.path(fmt.data_name(data_gen)), directory.path(fmt.index_name(index_gen))
    if not os.path.lexists(data_path):
        raise directory.missing_generation(data_path, data_gen, index_gen)
    fd, header, size = open_data_fd(data_path, True)
    index = None
    built = None
    report = None
    try:
        if size < header.checkpoint:
            raise CorruptPayloadError(
                data_path, f"data file is {size} bytes, shorter than its checkpoint "
                           f"({header.checkpoint}): it was cut behind the store's back; "
                           f"records may be missing (open read-only to salvage)")
        rebuilt = None
        if not os.path.exists(index_path) and size > fmt.DATA_HEADER_SIZE:
            rebuilt = "index file missing"
        else:
            try:
                index = DiskHashIndex(index_path, timeout=0.0)
            except CorruptIndexError as exc:
                rebuilt = f"index damaged: {exc}"
            else:
                if index.recovery is not None and index.recovery.dropped:
                    rebuilt = f"index repair dropped {len(index.recovery.dropped)} entries"
        checkpoint = min(max(header.checkpoint, fmt.DATA_HEADER_SIZE), size)
        # The log after the checkpoint, up to its first invalid frame: nothing
        # after the last save() was promised durable, so that is where it ends.
        final, result = fmt.replay(fd, checkpoint, size, data_path, mode="stop")
        cut = result.end
        cut_frames, cut_keys = 0, set[int]()
        if result.torn and cut < size:
            cut_frames, cut_keys = _after_cut(fd, cut, size, data_path)
            if cut_frames and rebuilt is None:
                rebuilt = (f"point-in-time recovery: {cut_frames} whole record(s) after an "
                           f"invalid stretch at offset {cut} were cut")
        if rebuilt is None and header.open_across_reboot():
            # A power loss (or a crash of the machine): the index file may hold
            # any mix of the pages written since the last save() -- a delete
            # whose tombstone never reached the disk among them, which no
            # replay could notice.  The log up to the cut is the truth.
            rebuilt = "the system restarted while the store was open for writing"
        if rebuilt is None:
            assert index is not None
            apply_final(index, final)
            if header.flags & fmt.FLAG_DIRTY:
                past = _keys_past(index, cut)
                if past:
                    # Power loss: index pages reached the disk before the data they
                    # point at.  The log is the truth: rebuild from it.
                    rebuilt = "index points past the end of the data file"
                    cut_keys.update(past)
        end = cut
        salvaged = None
        if rebuilt is not None:
            old, index = index, None
            try:
                built = directory.path(fmt.index_name(index_gen + 1))
                index, salvaged = build_index(directory, built, fd, cut, data_path, None,
                                                    salvage=salvage, old_index=old)
            finally:
                if old is not None:
                    old.close()
            index_gen += 1
        # Commit: cut the tail, then the header and (for a new index) the MANIFEST.
        if end < size:
            if alone:
                os.ftruncate(fd, end)
            else:
                zero_tail(fd, end, size, whole=True)
            if fsync:
                fsync_data(fd)
        if salvaged is not None and salvaged.keys:
            # The dropped keys get tombstones, so the next rebuild finds
            # their damaged records dead instead of refusing again.
            end = write_all(fd, [fmt.tombstone(k) for k in salvaged.keys], end)
            report = salvaged
        if rebuilt is not None:
            write_header(fd, end, fmt.FLAG_DIRTY, fsync)
            directory.write_manifest(data_gen, index_gen)
            built = None
            index_path = directory.path(fmt.index_name(index_gen))
        else:
            assert index is not None
            if final:
                if fsync:
                    fsync_data(fd)
                index.save()
                checkpoint = end
            checkpoint = min(checkpoint, end)
            write_header(fd, checkpoint, fmt.FLAG_DIRTY, fsync)
        removed = directory.remove_leftovers(data_gen, index_gen)
        checkpoint = read_checkpoint(fd, data_path)
    except BaseException:
        if index is not None:
            index.close()
        if built is not None:
            unlink(built, built + ".lock")
        os.close(fd)
        raise
    assert index is not None
    gen = Generation(data_gen, index_gen, data_path, index_path, fd, index)
    recovery = StoreRecovery(len(final), size - cut, cut_frames, tuple(sorted(cut_keys)),
                             rebuilt, tuple(removed))
    return Opened(gen, end, checkpoint, None if recovery == StoreRecovery() else recovery, report)

def _after_cut(fd: int, cut: int, size: int, path: str) -> "tuple[int, set[int]]":
    """What the point-in-time cut at ``cut`` drops: the whole valid frames
    after it (found frame by frame past each invalid stretch) and the edge
    ids they, and a torn record's still plausible header, name."""
    frames, keys = 0, set[int]()
    for item in fmt.scan_resync(fd, cut, size, path):
        if isinstance(item, fmt.Frame):
            frames += 1
            keys.add(item.key)
        elif isinstance(item, fmt.Damage) and item.key is not None:
            keys.add(item.key)
    return frames, keys

def _keys_past(index: DiskHashIndex, end: int) -> "set[int]":
    return {key for key, meta in index.items() if meta.offset + meta.length > end}

def build_index(directory: StoreDirectory, index_path: str, fd: int, end: int, data_path: str,
                 progress: "Callable[[int, int], Any] | None", *, salvage: bool = False,
                 old_index: "DiskHashIndex | None" = None,
                 ) -> "tuple[DiskHashIndex, SalvageReport | None]":
    """A new index at ``index_path`` holding the final state of the log up to
    ``end`` (tombstones honoured), and what it passed over.

    An invalid stretch of the log is passed over to the next valid frame.
    It costs nothing when the records in it are dead (their key has a
    later valid frame or tombstone); records whose key's newest frame is
    in it (found by their header, or, where the header is damaged too, by
    ``old_index`` pointing into the stretch) are lost: without
    ``salvage`` that raises ``DamagedRecordsError`` naming them before
    any file is written; with it they are left out, reported in the
    ``SalvageReport`` (None when nothing was passed over).
    """
    damages: "list[fmt.Damage]" = []
    np = numpy_or_none() if LogFold is not None else None
    if np is not None:
        # The log folded in C, indexed with one insert_many (docs/internals/design.md).
        table = LogFold()
        fmt.fold(fd, fmt.DATA_HEADER_SIZE, end, data_path, table, progress, "resync", damages)
        count = table.live
        key_rows, meta_rows = table.rows()
        del table
        live: "dict[int, tuple[int, int, int, int]]" = {}
    else:
        final, _ = fmt.replay(fd, fmt.DATA_HEADER_SIZE, end, data_path, progress, "resync", damages)
        live = {k: v for k, v in final.items() if v is not None}
        count = len(live)
    report = None
    lost: "list[int]" = []
    if damages:
        rows: Any = live
        if np is not None:
            from diskhash._index import dtypes as _dtypes
            rows = (np.frombuffer(key_rows, dtype=_dtypes.KEY_DTYPE),
                    np.frombuffer(meta_rows, dtype=_dtypes.META_DTYPE))
        lost = _damaged_live(fd, end, data_path, damages, old_index,
                             _maybe_deleted(fd, damages, old_index, rows))
        if lost and not salvage:
            shown = ", ".join(f"{k:#x}" for k in lost[:20]) + (", ..." if len(lost) > 20 else "")
            raise DamagedRecordsError(
                data_path, [f"damaged record(s) at offset {d.start} ({d.end - d.start} bytes)"
                            for d in damages[:100]]
                + [f"{len(lost)} key(s) whose newest record is damaged would be lost: {shown}; "
                   f"nothing was changed (salvage=True drops them and reports them)"],
                lost, offset=damages[0].start)
        report = SalvageReport(tuple(lost), len(damages), sum(d.end - d.start for d in damages))
    for leftover in (index_path, index_path + ".lock"):
        try:
            os.unlink(leftover)
        except FileNotFoundError:
            pass
    index = DiskHashIndex(index_path, capacity=max(count, 1), timeout=0.0)
    try:
        if np is not None:
            if count:
                from diskhash._index import dtypes as _dtypes
                index.insert_many(np.frombuffer(key_rows, dtype=_dtypes.KEY_DTYPE),
                                  np.frombuffer(meta_rows, dtype=_dtypes.META_DTYPE))
        else:
            bulk_insert(index, live)
        for key in lost:
            index.delete(key)
        index.save()
        fsync_dir(directory.directory)
    except BaseException:
        index.close()
        raise
    if progress is not None:
        progress(end, end)
    return index, report
