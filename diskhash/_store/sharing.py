"""What a store's writer shares with the other processes that have the store open.

The store's shared page (``SharedPage``, in store.lock) publishes where the
log ends, its checkpoint and which generation is current; ``Sharing`` keeps
this process's writer in step with it.  The door of every write
(``WriterDoor`` in ``_store/write.pyx``) calls it: after taking the
cross-process writer lock, ``recover_dead`` (its last holder died) and
``sync`` (take what other processes wrote); before letting it go,
``publish``.  Readers call ``follow`` through ``Writer.current`` when the
page's generation count moved: another process's ``compact()`` or
``rebuild_index()`` switched the files, which this process then opens.
docs/guide/processes.md says what is promised.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from diskhash._store.generation import Generation, StoreDirectory, keep_resident, read_checkpoint
from diskhash._store.recovery import open_generation, recover_tail
from diskhash._store.shared import SharedPage
from diskhash.errors import CorruptPayloadError

if TYPE_CHECKING:
    from diskhash._store.writer import Writer

__all__ = ["Sharing", "moved_on", "reader_end"]

#: A generation that vanishes while it is opened (switched again meanwhile)
#: is looked up again this many times.
FOLLOW_ATTEMPTS = 8


class Sharing:
    """One writer's view of the shared page: ``page`` (whose ``seen`` is the
    page's generation count when this open last followed the MANIFEST),
    ``files`` (the store's directory, for its MANIFEST) and ``follow_lock``
    (held while this process switches its generation).  The door takes a
    fast path of its own while nothing moved (``WriterDoor._cross_enter``):
    the methods here are the rest."""

    __slots__ = ("page", "files", "follow_lock")

    def __init__(self, page: SharedPage, files: StoreDirectory) -> None:
        self.page = page
        self.files = files
        self.follow_lock = threading.Lock()

    def opened(self, g: Generation, seen: int) -> None:
        """The open found ``g`` current when the count was ``seen``."""
        self.page.seen = seen
        g.watch(self.page, seen)

    def behind(self) -> bool:
        """Whether another process switched the generation since this one
        followed: the next read or write opens files first (the async twin
        does that in a worker thread, not on its event loop)."""
        return self.page.seq != self.page.seen

    def follow(self, writer: "Writer", force: bool = False) -> Generation:
        """Open the generation the MANIFEST names if it is not ``writer``'s
        (another process switched it); ``force``: read the MANIFEST even if
        the count did not move (a dead writer's recovery)."""
        page, files = self.page, self.files
        with self.follow_lock:
            for _ in range(FOLLOW_ATTEMPTS):
                seq = page.seq
                g = writer.gen
                if g is None:
                    raise writer.closed_error()
                if seq == page.seen and not force:
                    return g
                gens = files.read_manifest()
                if gens is None:
                    raise CorruptPayloadError(files.manifest_path, "store manifest is missing")
                if gens != (g.data_gen, g.index_gen):
                    try:
                        new = open_generation(files, gens[0], gens[1], not writer.readonly)
                    except (FileNotFoundError, CorruptPayloadError):
                        # Switched again while we opened it (the switcher
                        # deletes the old files before it bumps the count:
                        # the MANIFEST tells): again.
                        if page.seq != seq or files.read_manifest() != gens:
                            continue
                        raise
                    if writer.gen is None:
                        new.close(sync=False)
                        raise writer.closed_error()
                    # (the old generation is closed by its finaliser when the
                    # last reader of this process lets go of it)
                    keep_resident(new, writer.resident_index)
                    writer.gen = g = new
                page.seen = seq
                g.watch(page, seq)
                return g
            raise CorruptPayloadError(files.manifest_path, "the store's generation keeps changing")

    def sync(self, writer: "Writer") -> None:
        """The cross-process writer lock just taken: follow a switched
        generation, then take the log's end and checkpoint other processes'
        writers published."""
        page = self.page
        g = self.follow(writer) if page.seq != page.seen else writer.gen
        if g is None:
            return
        if page.generations != (g.data_gen, g.index_gen):
            # The page lags the MANIFEST: its writer died between the rename
            # and the publish, and the lock did not say so.
            self.recover_dead(writer)
            return
        writer.end = page.log_end
        writer.checkpoint = page.checkpoint
        writer.published = g

    def publish(self, writer: "Writer") -> None:
        """Leaving the cross-process writer lock: where the log ends now (a
        new generation also moves the count)."""
        g = writer.gen
        if g is None:
            return
        page = self.page
        page.publish(g.data_gen, g.index_gen, writer.end, writer.checkpoint)
        page.seen = page.seq
        g.watch(page, page.seen)
        writer.published = g

    def recover_dead(self, writer: "Writer") -> None:
        """The last holder of the writer lock died holding it: finish its write
        (the frames it appended after the end it published are indexed, a
        torn one is zeroed: ``recover_tail``), or, if it died committing a
        ``compact()``, take the generation its MANIFEST names."""
        page = self.page
        g = self.follow(writer, force=True)
        if page.generations == (g.data_gen, g.index_gen):
            start = page.log_end
        else:
            start = read_checkpoint(g.fd, g.data_path)
        writer.end = recover_tail(g, start)
        writer.checkpoint = min(max(page.checkpoint, read_checkpoint(g.fd, g.data_path)), writer.end)
        writer.unsaved = True
        self.publish(writer)


def moved_on(writer: "Writer", g: Generation) -> bool:
    """Whether the store's current generation is no longer ``g`` (a file of
    ``g`` vanished).  Another process's ``compact()`` deletes the old files
    after its MANIFEST rename but before it bumps the page's count, so the
    MANIFEST is read again (``follow(force=True)``), not the count."""
    cur = writer.gen
    if cur is not g:
        return cur is not None
    sharing = writer.sharing
    return sharing is not None and sharing.follow(writer, force=True) is not g


def reader_end(sharing: "Sharing | None", g: Generation) -> int:
    """Where a read-only store's log ends: the end the writers of other
    processes last published while they keep ``g`` current, else the data
    file's size.  The size counts their preallocated space and a frame being
    written, which ``verify()`` would call a torn tail."""
    size = os.fstat(g.fd).st_size
    if sharing is not None:
        page = sharing.page
        if page.live and page.generations == (g.data_gen, g.index_gen):
            return min(page.log_end, size)
    return size
