"""What a store holds besides its files' contents, and what a forked child does with it.

``Lifetime`` keeps ``store.lock``, the maintenance lock and the sync thread
of one open ``PayloadStore``, and marks a copy of the store inherited across
``fork()``: the child shares the parent's data file, its map and its lock,
so a write at the child's stale end of the log, a truncation or an unlock
at close would destroy the parent's newer records or drop its lock.  The
store asks it before anything that could: ``check_not_forked()``.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any, Callable

from diskhash._fs.files import IndexLock
from diskhash._store.maintenance import MaintenanceLock, Syncer
from diskhash._store.shared import SharedPage
from diskhash._store.write import Maintaining
from diskhash._store.writer import Writer
from diskhash.errors import IndexClosedError

__all__ = ["Lifetime"]

#: The lifetimes of the stores open in this process, so a forked child can
#: disable its copies (as the index does with its own:
#: diskhash/_index/table_lifetime.pxi).
_open: "weakref.WeakSet[Lifetime]" = weakref.WeakSet()


def _disable_inherited() -> None:
    for life in list(_open):
        try:
            life.disable_in_child()
        except Exception:  # pragma: no cover - an at-fork handler must not raise
            pass


os.register_at_fork(after_in_child=_disable_inherited)


class Lifetime:
    """The locks and the sync thread of one open store, and its fork mark.

    ``lock`` is ``store.lock`` (None once let go), ``maintenance`` the fair
    lock held for the whole of ``compact()`` and ``rebuild_index()`` (and by
    ``close()``), ``syncer`` the sync thread (None without a sync interval),
    ``forked`` True in a forked child's copy: every call then raises
    ``IndexClosedError`` naming the fix, before touching a file.
    """

    __slots__ = ("directory", "lock", "page", "writer", "maintenance", "syncer", "forked", "__weakref__")

    def __init__(self, directory: str, lock: IndexLock, page: "SharedPage | None" = None) -> None:
        self.directory = directory
        self.lock: "IndexLock | None" = lock
        #: The shared page mapped from store.lock (let go before the lock).
        self.page = page
        self.writer: "Writer | None" = None
        self.maintenance = MaintenanceLock()
        self.syncer: "Syncer | None" = None
        self.forked = False

    def opened(self, writer: Writer, sync_every: "float | None") -> None:
        """The store is open: watched across fork() from now on, and its sync
        thread started (a writable store with a sync interval)."""
        self.writer = writer
        _open.add(self)
        if sync_every is not None and not writer.readonly:
            self.syncer = Syncer(writer, sync_every)

    def close(self, sync: bool) -> None:
        """``PayloadStore.close()``: the sync thread stopped, the writes saved
        (the last writable open of all processes also cuts the log's spare
        tail and marks the data file clean: ``Writer.finish``), the current
        generation closed, the page and store.lock let go -- the lock even
        when Ctrl-C lands in the middle.  In a forked child only the child's
        copies are let go.  ``sync``: False for ``sync="never"``."""
        if self.forked:
            self.release_inherited()
            return
        writer = self.writer
        if writer is None:
            self.release_lock()
            return
        try:
            with self.maintenance, writer.lock:
                g = writer.gen
                if g is None:
                    return
                if self.syncer is not None:
                    self.syncer.stop()
                try:
                    if not writer.readonly:
                        with writer as g:
                            if self.page is None or self.last_writer():
                                writer.finish(g)        # the last writer out: a clean file
                                if self.page is not None:
                                    self.page.reset()   # (the next writer recovers, as alone)
                            else:
                                writer.save_locked(g)   # other writers go on with it
                finally:
                    g = writer.gen if writer.gen is not None else g
                    writer.gen = None
                    self.forget()
                    try:
                        g.close(sync=sync)
                    finally:
                        self.release_lock()
        finally:
            if writer.gen is None:
                self.release_lock()
                self.stop_syncer()

    def closed_error(self) -> IndexClosedError:
        if self.forked:
            return IndexClosedError(
                f"{self.directory}: store was inherited across fork(); open it again in the child "
                f"(PayloadStore(directory) after the fork): its files are the parent's")
        return IndexClosedError(f"{self.directory}: store is closed")

    def check_not_forked(self) -> None:
        """Raise in a forked child: before a lazy import (a parent thread may
        have held the import lock at the fork: a hang) and before a write."""
        if self.forked:
            raise self.closed_error()

    def forget(self) -> None:
        """The store is closing: nothing left to disable after a fork."""
        _open.discard(self)

    def release_lock(self) -> None:
        """Let go of the shared page and store.lock (idempotent; forgotten only once released)."""
        page, self.page = self.page, None
        if page is not None:
            page.release()
        lock = self.lock
        if lock is not None:
            lock.close()
            self.lock = None

    def last_writer(self) -> bool:
        """Whether no other writable open of the store exists (then none can
        start until this one closes): the last writer out cuts the log's
        spare tail and marks the file clean.  Read-only opens may stay: they
        read only records before the log's end."""
        lock = self.lock
        return lock is not None and lock.last_writer()

    def maintaining(self) -> Maintaining:
        """Held for a whole ``compact()`` or ``rebuild_index()``: this
        process's fair maintenance lock, then the cross-process one."""
        if self.lock is None:
            raise self.closed_error()
        return Maintaining(self.maintenance, self)

    def hold_maintenance(self) -> None:
        """``Maintaining``'s cross-process step, taken once this process's
        maintenance lock is held: a ``close()`` that held it first has let
        store.lock go meanwhile, so the store is closed (not a lock call on
        a closed descriptor)."""
        lock = self.lock
        if lock is None or lock.fd < 0:
            raise self.closed_error()
        lock.hold_maintenance()

    def release_maintenance(self) -> None:
        lock = self.lock
        if lock is not None:
            lock.release_maintenance()

    def stop_syncer(self) -> None:
        """Stop the sync thread and wait for it (it sees the store closed and ends)."""
        syncer, self.syncer = self.syncer, None
        if syncer is not None:
            syncer.stop()
            syncer.join()

    def disable_in_child(self) -> None:
        """In a forked child (``os.register_at_fork``): make this copy unusable.

        Its locks are replaced (a parent thread may have held them at the
        fork: the child's copies would stay held for ever) and its
        descriptors and maps let go without writing, syncing or unlocking
        anything.
        """
        self.forked = True
        if self.writer is not None:
            self.writer.lock = threading.RLock()
        self.maintenance = MaintenanceLock()
        self.syncer = None              # (the thread does not exist in the child)
        self.release_inherited()

    def release_inherited(self) -> None:
        """The child's own resources only: maps unmapped, descriptors closed
        (the data file's pointed at /dev/null until its finaliser), the lock's
        descriptor closed without ``LOCK_UN`` (the flock is the parent's)."""
        writer = self.writer
        if writer is not None:
            g, writer.gen = writer.gen, None
            if g is not None:
                g.release()
        page, self.page = self.page, None
        if page is not None:
            page.release()          # (unmapped, never unlocked: the parent's)
        lock = self.lock
        if lock is not None:
            try:
                lock.close(unlock=False)
            finally:
                self.lock = None

    def fork_checked(self, progress: "Callable[[int, int], Any] | None",
                     ) -> "Callable[[int, int], Any] | None":
        """``progress``, then a check that it did not fork: a child going on
        with the parent's maintenance would write files the parent is writing."""
        if progress is None:
            return None

        def checked(done: int, total: int) -> Any:
            got = progress(done, total)
            self.check_not_forked()
            return got
        return checked
