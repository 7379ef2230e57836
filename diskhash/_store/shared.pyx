# cython: language_level=3, binding=False, boundscheck=False, wraparound=False
"""The store's shared page: what every process that opens one store agrees on.

``SharedPage(mapping, path)`` wraps the page a store maps from its
``store.lock`` (``IndexLock.map_page``).  Writers of all processes take
turns on its robust process-shared mutex (``lock``/``unlock``: LMDB's
choice; the next locker learns that a holder died and recovers its
half-done write); the holder publishes where the log ends and which
generation is current, and readers compare one counter (``seq``) to learn
that the generation changed.  docs/guide/processes.md says what is promised.
"""

import os

from libc.errno cimport EBUSY
from libc.stdint cimport uint64_t
from libc.string cimport memset

from diskhash._format.sochidx2 cimport dh_load_acquire, dh_load_relaxed, dh_store_release
from diskhash._index.locks cimport (
    dh_robust_mutex_init,
    pthread_mutex_consistent,
    pthread_mutex_lock,
    pthread_mutex_t,
    pthread_mutex_trylock,
    pthread_mutex_unlock,
)

from diskhash.errors import DiskHashError, IndexClosedError

cdef extern from "<errno.h>":
    enum:
        EDEADLK
        EOWNERDEAD
        ENOTRECOVERABLE

#: ``lock``'s answers: taken, busy (only without ``block``), taken from a holder that died.
TAKEN = 0
BUSY = 1
OWNER_DIED = 2

cdef uint64_t _pid = os.getpid()


def _forked():
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


cdef class SharedPage:
    """A store's shared page (see the module docstring); ``mapping`` is the
    mmap of it, kept alive here; ``path`` names the store in messages."""

    def __cinit__(self, mapping, path):
        self._map = mapping
        try:
            self._view = memoryview(mapping).cast("B")
        except TypeError:
            raise TypeError("SharedPage needs a mapping of the page") from None
        if self._view.nbytes < sizeof(dh_store_page):
            raise ValueError(f"{path}: the shared page is {self._view.nbytes} bytes")
        self.writable = not self._view.readonly
        cdef const unsigned char[::1] ro
        cdef unsigned char[::1] rw
        if self.writable:
            rw = self._view
            self.page = <dh_store_page *>&rw[0]
        else:
            ro = self._view
            self.page = <dh_store_page *>&ro[0]
        self.path = path

    def release(self):
        """Let go of the page (the store is closing); later calls raise."""
        self.page = NULL
        view, self._view = self._view, None
        if view is not None:
            view.release()
        self._map = None

    cdef dh_store_page *_page(self) except NULL:
        if self.page == NULL:
            raise IndexClosedError(f"{self.path}: store is closed")
        return self.page

    cdef dh_store_page *_wpage(self) except NULL:
        cdef dh_store_page *p = self._page()
        if not self.writable:
            raise DiskHashError(f"{self.path}: the shared page is mapped read-only")
        return p

    # -- what readers read ----------------------------------------------------------

    @property
    def seq(self):
        """How many times the store's generation changed (acquire: the MANIFEST
        renamed before it was bumped is seen by whoever sees the new count)."""
        return dh_load_acquire(&self._page().seq)

    @property
    def live(self):
        return dh_load_acquire(&self._page().live) == 1 and self._page().magic == DH_STORE_PAGE_MAGIC

    @property
    def generations(self):
        cdef dh_store_page *p = self._page()
        return (dh_load_relaxed(&p.data_gen), dh_load_relaxed(&p.index_gen))

    @property
    def log_end(self):
        return dh_load_relaxed(&self._page().log_end)

    @property
    def checkpoint(self):
        return dh_load_relaxed(&self._page().checkpoint)

    @property
    def owner_pid(self):
        return dh_load_relaxed(&self._page().owner_pid)

    # -- what the opener that sets up a session writes -----------------------------------

    def reset(self):
        """No writable open has set this session up yet (an open alone, read-only)."""
        cdef dh_store_page *p = self._wpage()
        dh_store_release(&p.live, 0)
        dh_store_release(&p.seq, dh_load_relaxed(&p.seq) + 1)

    def start(self, uint64_t data_gen, uint64_t index_gen, uint64_t log_end, uint64_t checkpoint):
        """A writable open set the store up (recovered it): a fresh mutex
        (nobody else writes now: the opener is alone, or no writer is open
        and the opener holds the create lock), the state, then ``live``."""
        cdef dh_store_page *p = self._wpage()
        cdef uint64_t seq = dh_load_relaxed(&p.seq) if p.magic == DH_STORE_PAGE_MAGIC else 0
        memset(p, 0, sizeof(dh_store_page))
        if dh_robust_mutex_init(<void *>&(<char *>p)[64]) != 0:
            raise OSError(f"{self.path}: cannot create the store's cross-process writer lock")
        p.data_gen = data_gen
        p.index_gen = index_gen
        p.log_end = log_end
        p.checkpoint = checkpoint
        p.seq = seq + 1
        dh_store_release(&p.magic, DH_STORE_PAGE_MAGIC)
        dh_store_release(&p.live, 1)

    # -- the writer lock ------------------------------------------------------------------

    cpdef int lock(self, bint block) except -1:
        """Take the cross-process writer lock: ``TAKEN``, ``BUSY`` (only when
        not ``block``), or ``OWNER_DIED`` (taken; its holder died: put its
        half-done write right, then ``consistent()``).  Waits without the GIL."""
        cdef pthread_mutex_t *m = <pthread_mutex_t *>&(<char *>self._wpage())[64]
        cdef int rc = pthread_mutex_trylock(m)
        if rc == EBUSY:
            if not block:
                return BUSY
            with nogil:
                rc = pthread_mutex_lock(m)
        if rc == 0 or rc == EOWNERDEAD:
            self.page.owner_pid = _pid
            return TAKEN if rc == 0 else OWNER_DIED
        if rc == EDEADLK:
            raise DiskHashError(
                f"{self.path}: this thread already holds the store's writer lock through "
                f"another PayloadStore object of the same directory (inside its writing() block?)")
        if rc == ENOTRECOVERABLE:
            raise DiskHashError(
                f"{self.path}: the store's cross-process writer lock is unusable (a recovery "
                f"after a killed writer failed); close every process's store and open it again")
        raise OSError(rc, f"cannot take the store's cross-process writer lock: {os.strerror(rc)}",
                      self.path)

    def consistent(self):
        """The dead holder's write is put right: the lock works again."""
        pthread_mutex_consistent(<pthread_mutex_t *>&(<char *>self._wpage())[64])

    def publish(self, uint64_t data_gen, uint64_t index_gen, uint64_t log_end, uint64_t checkpoint):
        """The holder's state for the next writer (the lock held): where the
        log ends; a new generation also bumps ``seq`` (after the MANIFEST)."""
        cdef dh_store_page *p = self._wpage()
        p.log_end = log_end
        p.checkpoint = checkpoint
        if p.data_gen != data_gen or p.index_gen != index_gen:
            p.data_gen = data_gen
            p.index_gen = index_gen
            dh_store_release(&p.seq, p.seq + 1)

    cpdef int unlock(self) except -1:
        cdef dh_store_page *p = self.page
        if p == NULL:
            return 0
        p.owner_pid = 0
        pthread_mutex_unlock(<pthread_mutex_t *>&(<char *>p)[64])
        return 0
