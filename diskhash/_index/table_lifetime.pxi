# Included by table.pyx (one module, so the hot path stays inlined): the index's
# lifetime -- closing, and what a fork() does to an inherited index.
import _thread
import fcntl
import os
import weakref

from diskhash._format.sochidx2 cimport OFF_NUM_ENTRIES
from diskhash._index.locks cimport dh_thread_id, pthread_mutex_lock, pthread_mutex_unlock

from diskhash.errors import DiskHashError, IndexClosedError

cdef enum:
    STATE_OPEN = 0
    STATE_CLOSED = 1
    STATE_FORKED = 2


# Indexes alive in this process, so a forked child can disable its copies.
_open_indexes = weakref.WeakSet()


def _disable_inherited_indexes():
    global _pid
    _pid = os.getpid()
    for idx in list(_open_indexes):
        disable_in_child(<DiskHashIndex>idx)


os.register_at_fork(after_in_child=_disable_inherited_indexes)


cdef int close_index(DiskHashIndex self, bint sync=True) except -1:
    """Flush (if writable; not without ``sync``), record a clean close, unmap,
    unlock.  Idempotent.

    Other threads blocked on the index get ``IndexClosedError``.
    """
    if self._state == STATE_FORKED:
        release_resources(self, False)
        return 0
    if self._state != STATE_OPEN:
        if self._state == STATE_CLOSED:
            # (idempotent) a close that Ctrl-C cut short lets go of its lock now
            release_resources(self, True)
        return 0
    if self._xdepth and self._xowner == dh_thread_id():
        raise DiskHashError(f"{self.path}: close() inside `with idx.writing()`: leave the block first")
    with nogil:
        pthread_mutex_lock(&self._write_lock)
    try:
        if self._state != STATE_OPEN:
            return 0
        error = None
        if not self.readonly:
            try:
                if sync:
                    self._sync_locked()
                # Clean only if no other process has the index open (they
                # may still write) and no killed writer left work undone.
                if self._lock.try_quiet() and (self._shared == NULL or (
                        self._shared.seq & 1 == 0 and self._shared.flags == 0)):
                    self._lock.mark_clean(os.fstat(self._fd),
                                          (<uint64_t *>(self._base + OFF_NUM_ENTRIES))[0])
            except OSError as exc:
                error = exc
        self._exclusive_acquire()
        self._base = NULL
        self._state = STATE_CLOSED
        self._exclusive_release()
    finally:
        pthread_mutex_unlock(&self._write_lock)
    release_resources(self, True)
    _open_indexes.discard(self)
    if error is not None:
        raise error
    return 0


# ---------------------------------------------------------------------------
# Retiring a replaced table's map off the calling thread.
#
# After a grow or repair, the old table file has no name; the process that
# drops the last map or descriptor of it pays for freeing it: the kernel
# drops its page cache and the file system frees its blocks (with
# ``-o discard``, waiting for the device's discards).  For a table of a few
# million entries that is tens of ms (docs/performance.md).  A reader whose
# read found the table replaced by another process -- on an event loop, an
# inline ``await idx.get`` -- is often that last holder, and a writer
# holds the writer lock meanwhile; so the old map and descriptor are closed
# by a short-lived thread of their own.  ``close()`` waits for them, so a
# closed index holds nothing.

def _retire(mm, int fd, done):
    try:
        try:
            mm.close()
        except BufferError:     # a view of it still alive: unmapped when that goes
            pass
        os.close(fd)
    finally:
        done.release()


cdef int retire_map(DiskHashIndex self, object mm, int fd) except -1:
    """Close a replaced table's ``mm`` and ``fd`` in a thread of their own
    (see above).  The caller no longer uses them: the map lock was taken
    exclusively for the swap, so no reader of this process is in it."""
    # The inode lock goes now, not with the thread's close: an open of the
    # old file (another name of it: a hard link) right after must not find
    # it still locked by a table this index no longer uses.
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError:
        pass
    done = _thread.allocate_lock()
    done.acquire()
    if self._retiring is None:
        self._retiring = []
    else:
        self._retiring = [d for d in self._retiring if d.locked()]
    self._retiring.append(done)
    try:
        _thread.start_new_thread(_retire, (mm, fd, done))    # (does not wait for it to start)
    except BaseException:
        self._retiring.pop()
        _retire(mm, fd, done)           # no thread to be had: close them here
        raise
    return 0


cdef int wait_retired(DiskHashIndex self) except -1:
    """Wait until every map retired by ``retire_map`` is closed."""
    retiring, self._retiring = self._retiring, None
    for done in retiring or ():
        done.acquire()
    return 0


cdef int release_resources(DiskHashIndex self, bint unlock) except -1:
    wait_retired(self)
    self._base = NULL
    self.resident = None
    self._view = None
    self._undo = NULL
    self._shared = NULL
    self._undo_view = None
    if self._mmap is not None:
        self._mmap.close()
        self._mmap = None
    if self._fd >= 0:
        os.close(self._fd)
        self._fd = -1
    if self._lock is not None:
        self._lock.close(unlock=unlock)
    if self._state == STATE_OPEN:
        self._state = STATE_CLOSED
    return 0


cdef int disable_in_child(DiskHashIndex self) except -1:
    """In a forked child: make the inherited copy unusable, drop its descriptors.

    The lock file's descriptor is closed without unlocking (the flock
    belongs to the parent's open file description), so the parent's lock
    ends when the parent closes or dies, however long the child lives.
    """
    if self._state != STATE_OPEN:
        return 0
    self._state = STATE_FORKED
    self._retiring = None       # (those threads are the parent's: none runs here)
    self._base = NULL
    self._undo = NULL
    self._shared = NULL
    self._undo_view = None
    if self._lock is not None:
        self._lock.close(unlock=False)
    if self._fd >= 0:
        os.close(self._fd)
        self._fd = -1
    self._view = None
    try:
        self._mmap.close()
        self._mmap = None
    except BufferError:     # a view exported by a parent thread: unmapped at exit
        pass
    return 0


def close_unsynced(DiskHashIndex self):
    """``close()`` without the msync: the writes stay in the page cache,
    which a process crash keeps (``PayloadStore(sync="never")``)."""
    close_index(self, False)
