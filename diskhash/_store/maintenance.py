"""A store's maintenance: ``stats()`` and ``verify()`` over one generation,
``rebuild_index()``, the sync thread, and the fair lock that compact(),
rebuild_index() and close() hold.

The store decides when these run and which writers wait; what they compute
from a generation's files lives here.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, NamedTuple

from diskhash._format import payload as fmt
from diskhash._store import codecs as _codecs
from diskhash._store.generation import Generation, StoreDirectory, unlink
from diskhash._store.recovery import apply_final, build_index
from diskhash._store.write import MaintenanceLock  # (compiled: Ctrl-C cannot leave it held)
from diskhash._store.writer import Writer
from diskhash._types import PayloadMeta, SalvageReport
from diskhash.errors import CorruptPayloadError, IndexClosedError

__all__ = ["MaintenanceLock", "StoreStats", "Syncer", "rebuild_index", "stats_of", "verify_generation"]


class StoreStats(NamedTuple):
    """A snapshot of a store (``PayloadStore.stats()``).

    ``data_bytes`` is the data file's size, ``live_bytes`` the frames the
    index points at (header + stored payload), so ``data_bytes - live_bytes``
    is what ``compact()`` would reclaim.  ``stored_bytes`` and
    ``uncompressed_bytes`` sum the live payloads as stored and as given.
    """

    entries: int
    data_bytes: int
    live_bytes: int
    stored_bytes: int
    uncompressed_bytes: int
    index_bytes: int
    garbage_ratio: float
    data_generation: int
    index_generation: int
    checkpoint: int


def _all_zero(fd: int, start: int, end: int) -> bool:
    """Whether bytes [start, end) of the file are all zero."""
    while start < end:
        chunk = os.pread(fd, min(end - start, 1 << 20), start)
        if not chunk or chunk.count(0) != len(chunk):
            return not chunk
        start += len(chunk)
    return True


def stats_of(g: Generation, size: int, checkpoint: int) -> StoreStats:
    """A ``StoreStats`` of generation ``g`` whose log ends at ``size`` (walks its
    index: the caller holds the writers off).  ``FileNotFoundError`` when the
    index file is gone (a compaction replaced the generation meanwhile)."""
    entries = live = stored = raw = 0
    for m in g.index.values():
        entries += 1
        live += fmt.FRAME_SIZE + m.length
        stored += m.length
        raw += m.uncompressed_length
    body = max(size - fmt.DATA_HEADER_SIZE, 0)
    index_bytes = os.path.getsize(g.index_path)
    return StoreStats(entries, size, live, stored, raw, index_bytes,
                      (body - live) / body if body else 0.0, g.data_gen, g.index_gen, checkpoint)


def verify_generation(g: Generation, size: int, read: "Callable[[Generation, PayloadMeta], Any]") -> None:
    """``PayloadStore.verify()`` of generation ``g`` whose log ends at ``size``;
    ``read`` reads a record by its index entry (``StoreReader.read``)."""
    g.index.verify()
    defects: list[str] = []
    frames: dict[int, fmt.Frame] = {}
    try:
        for item in fmt.scan(g.fd, fmt.DATA_HEADER_SIZE, size, g.data_path):
            if isinstance(item, fmt.Frame):
                if item.kind == fmt.KIND_PUT:
                    frames[item.offset + fmt.FRAME_SIZE] = item
            elif item.torn and item.end < size and not _all_zero(g.fd, item.end, size):
                # (zeros are blocks a writer allocated ahead, not damage)
                defects.append(f"torn tail: {size - item.end} bytes after offset {item.end} "
                               f"hold no valid record (a writable open cuts them)")
    except CorruptPayloadError as exc:
        defects.extend(f"{d} at offset {exc.offset}" for d in exc.defects)
    for key, m in g.index.items():
        f = frames.get(m.offset)
        if f is None:
            if not defects or len(defects) < 1000:
                try:
                    read(g, m)
                    continue            # beyond a mid-log defect but intact
                except CorruptPayloadError as exc:
                    defects.append(f"edge id {key:#x} at offset {m.offset}: {exc.defects[0]}")
            continue
        if (f.key, f.stored_length, f.compression, f.uncompressed_length) != \
                (key, m.length, int(m.compression), m.uncompressed_length):
            defects.append(f"edge id {key:#x}: index record {tuple(m)[1:]} does not match "
                           f"the frame at offset {f.offset}")
        elif m.compression:
            # The checksum covers the stored bytes, not what they decode to:
            # a record get() would refuse is damage too.  One at a time.
            try:
                _codecs.check_decodes(int(m.compression), g.fd, m.offset, m.length,
                                      m.uncompressed_length)
            except ValueError as exc:
                defects.append(f"edge id {key:#x} at offset {f.offset}: {exc}")
    if defects:
        raise CorruptPayloadError(g.data_path, defects)


def rebuild_index(g: Generation, writer: Writer, directory: StoreDirectory,
                  write_manifest: Callable[[int, int], None],
                  progress: "Callable[[int, int], Any] | None", *,
                  salvage: bool) -> "tuple[Generation, int, SalvageReport | None]":
    """``PayloadStore.rebuild_index()``, inside the writer's door (``g``) and
    the maintenance lock: a new index generation built from the log
    (``recovery.build_index``), committed by ``write_manifest`` and switched
    to.  Returns (the new generation, entries indexed, the ``SalvageReport``
    or None); the keys a salvaging rebuild dropped still need their
    tombstones (``Writer.tombstones``)."""
    writer.save_locked(g)
    index_gen = g.index_gen + 1
    index_path = directory.path(fmt.index_name(index_gen))
    end = writer.end
    index, report = build_index(directory, index_path, g.fd, end, g.data_path,
                                progress, salvage=salvage, old_index=g.index)
    committed = False
    try:
        if writer.end != end:
            # ``progress`` wrote (the writer lock is reentrant): the
            # frames it appended are indexed too, or they would be lost.
            final, _ = fmt.replay(g.fd, end, writer.end, g.data_path)
            apply_final(index, final)
            index.save()
        write_manifest(g.data_gen, index_gen)
        committed = True
    finally:
        # The rename is the commit (as in compact()): once the MANIFEST names
        # the new index, switch to it even if what followed raised.
        if committed or directory.read_manifest() == (g.data_gen, index_gen):
            new = Generation(g.data_gen, index_gen, g.data_path, index_path, os.dup(g.fd), index)
            writer.switch(new, writer.end, writer.checkpoint)
            if committed:
                unlink(g.index_path, g.index_path + ".lock")
        else:
            index.close()
    return new, len(index), report


class Syncer:
    """The sync thread of ``sync=<milliseconds>``: a ``save()`` every interval
    while there are unsaved writes.  It enters through the writer's door like
    every other write; a failed save is left for the next ``save()``/``close()``
    to report."""

    def __init__(self, writer: Writer, interval: float) -> None:
        self._writer = writer
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="diskhash-store-sync", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        writer = self._writer
        while not self._stop.wait(self._interval):
            if not writer.unsaved:
                continue
            try:
                with writer as g:
                    writer.save_locked(g)
            except IndexClosedError:
                return
            except Exception:  # pragma: no cover - the next save()/close() reports it
                pass

    def stop(self) -> None:
        """Ask the thread to end (it does at its next wake-up)."""
        self._stop.set()

    def join(self) -> None:
        """Wait for the thread (not from the thread itself: the store closed by a progress callback)."""
        if self._thread is not threading.current_thread():
            self._thread.join()
