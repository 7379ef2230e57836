# Included by table.pyx (one module, so the index's fields stay C fields):
# the writer's locks -- the in-process writer mutex, then (shared mode) the
# robust cross-process mutex in the lock file's shared page, with recovery
# after a dead writer -- and what a reader does when its optimistic read
# cannot start (a replaced table, a slot change in progress, a dead writer).
# The short hot-path lock calls (_read_acquire, _read_begin, _write_release,
# the map lock) stay methods of DiskHashIndex.
import os

from libc.stdint cimport uint64_t
from libc.errno cimport EBUSY
from diskhash._format.sochidx2 cimport OFF_NUM_ENTRIES, dh_load_relaxed, dh_shared, dh_shared_mutex
from diskhash._index.locks cimport (
    dh_robust_owner_gone,
    dh_thread_id,
    pthread_mutex_consistent,
    pthread_mutex_lock,
    pthread_mutex_t,
    pthread_mutex_trylock,
    pthread_mutex_unlock,
)

from diskhash.errors import DiskHashError, IndexLockedError, ReadOnlyIndexError

cdef extern from *:
    """
    #include <sched.h>
    #include <time.h>
    #include <unistd.h>
    static double dh_now(void) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
    }
    static void dh_nap(unsigned int us) { if (us) usleep(us); else sched_yield(); }
    """
    double dh_now() nogil
    void dh_nap(unsigned int us) nogil

cdef extern from "<errno.h>":
    enum:
        EDEADLK
        EOWNERDEAD
        ENOTRECOVERABLE

# This process's id, stored in the shared page by the writer holding the
# cross-process mutex (for messages); set again in a forked child.
cdef uint64_t _pid = os.getpid()

# A reader that finds the seqlock odd this long looks at whether the writer
# holding it is still alive (a writer changes slots for well under a
# microsecond; this allows for it being descheduled on a busy machine).
cdef double ODD_SEQ_PATIENCE = 0.02


cdef int read_wait(DiskHashIndex self, uint64_t seq, double *since, int *spins) except -1:
    """Why a read cannot start: re-map a replaced table, or wait for the
    writer of another process to finish its slot change -- or, if that
    writer died, recover (a writable index) or wait for a writer to
    (read-only: up to the open's timeout, then IndexLockedError)."""
    cdef dh_shared *sh = self._shared
    cdef double now
    if dh_load_relaxed(&sh.table_gen) != self._table_gen:
        remap_for_reader(self)
        return 0
    if spins[0] < 64:
        spins[0] += 1
        with nogil:
            dh_nap(0)
        return 0
    now = dh_now()
    if since[0] == 0.0:
        since[0] = now
    if now - since[0] < ODD_SEQ_PATIENCE or not dh_robust_owner_gone(dh_shared_mutex(sh)):
        with nogil:
            dh_nap(200)
        return 0
    # The writer died in the middle of a slot change.
    if not self.readonly:
        write_acquire(self, True)       # EOWNERDEAD: recovers it
        self._write_release()
        spins[0] = 0
        since[0] = 0.0
        return 0
    if self._timeout is not None and now - since[0] >= max(self._timeout, ODD_SEQ_PATIENCE):
        raise IndexLockedError(
            self.path,
            f"a writer process (pid {sh.owner_pid}) died while changing the index and no "
            f"writer has recovered it yet: open the index writable in any process (or call "
            f"diskhash.repair) and this read goes on")
    with nogil:
        dh_nap(1000)
    return 0


cdef int write_acquire(DiskHashIndex self, bint block) except -1:
    """Take the writer mutex, then (shared mode) the cross-process one;
    returns 0, or 1 if busy and not `block`.

    Inside ``with writing()`` the thread that holds it takes nothing.
    After the cross-process mutex: a dead holder's half-done change is
    put right, a table file another process replaced is re-mapped and
    the entry count is read again, so this writer sees every write
    other processes made before."""
    cdef int rc
    cdef dh_shared *sh
    cdef pthread_mutex_t *m
    if self._state != STATE_OPEN:
        self._raise_unusable()
    if self.readonly:
        raise ReadOnlyIndexError(f"{self.path}: index is open read-only")
    if self._xdepth and self._xowner == dh_thread_id():
        return 0
    if pthread_mutex_trylock(&self._write_lock) != 0:
        if not block:
            return 1
        with nogil:
            pthread_mutex_lock(&self._write_lock)
    if self._base == NULL:
        pthread_mutex_unlock(&self._write_lock)
        self._raise_unusable()
    sh = self._shared
    if sh == NULL:
        return 0
    m = <pthread_mutex_t *>dh_shared_mutex(sh)
    rc = pthread_mutex_trylock(m)
    if rc == EBUSY:
        if not block:
            pthread_mutex_unlock(&self._write_lock)
            return 1
        with nogil:
            rc = pthread_mutex_lock(m)
    if rc == EOWNERDEAD:
        try:
            recover_dead_writer(self)
        except BaseException:
            # Not made consistent: every later locker gets ENOTRECOVERABLE
            # until an open that is alone with the index resets the mutex.
            pthread_mutex_unlock(m)
            pthread_mutex_unlock(&self._write_lock)
            raise
        pthread_mutex_consistent(m)
    elif rc != 0:
        pthread_mutex_unlock(&self._write_lock)
        if rc == EDEADLK:
            raise DiskHashError(
                f"{self.path}: this thread already holds the index's writer lock through "
                f"another DiskHashIndex object of the same file (inside its writing() block?)")
        if rc == ENOTRECOVERABLE:
            raise DiskHashError(
                f"{self.path}: the cross-process writer lock is unusable (a recovery after a "
                f"killed writer failed); close every process's index and open it again")
        raise OSError(rc, f"cannot take the cross-process writer lock: {os.strerror(rc)}", self.path)
    sh.owner_pid = _pid
    try:
        if dh_load_relaxed(&sh.table_gen) != self._table_gen or sh.flags:
            sync_with_others(self, False)
        self._num_entries = (<uint64_t *>(self._base + OFF_NUM_ENTRIES))[0]
    except BaseException:
        self._write_release()
        raise
    return 0


cdef int writing_enter(DiskHashIndex self) except -1:
    """``with idx.writing():`` entered: the writer lock held until the
    matching exit; re-entrant in the thread that holds it."""
    if self._xdepth and self._xowner == dh_thread_id():
        self._xdepth += 1
        return 0
    write_acquire(self, True)
    self._xowner = dh_thread_id()
    self._xdepth = 1
    return 0


cdef int writing_exit(DiskHashIndex self) except -1:
    """``with idx.writing():`` left: the lock goes at the outermost exit."""
    if not self._xdepth or self._xowner != dh_thread_id():
        raise RuntimeError(f"{self.path}: writing() block left by another thread")
    self._xdepth -= 1
    if self._xdepth == 0:
        self._xowner = 0
        self._write_release()
    return 0
