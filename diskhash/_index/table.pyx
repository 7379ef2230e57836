# cython: language_level=3, binding=False
# binding=False: methods are plain method descriptors, which check `self`.
# With Cython 3's default (binding=True), `DiskHashIndex.get(object(), 1)`
# would read a foreign object as an index and crash the interpreter.  (The
# other compiled modules define no extension types.)
"""DiskHashIndex: the SOCHIDX2 table in one memory-mapped file.

Concurrency (inside one process):
  * readers (get, in, batch lookups, iteration chunks) hold ``_map_lock``
    shared while they touch the map; any number run at once;
  * writers (insert, delete, grow, save, close) serialise on ``_write_lock``;
    a writer takes ``_map_lock`` exclusively only for the few stores that
    change slots, and for the pointer swap at the end of a grow, so readers
    keep going while a grow rehashes into the new file;
  * nobody waits on either lock while holding the GIL.

Crash safety: a new slot's fields are stored before its tag; a delete's
backward shift clears a slot's tag before rewriting it, so a crash can leave
at worst a duplicate or an unreachable copy (never a torn visible slot), which
the next writable open detects (the sidecar marker says the last writer did
not close cleanly) and heals.  A grow writes a new file beside the old one and
publishes it by fsync + rename + directory fsync.

Where each concern lives (one module; the .pxi files are textual includes so
the probe and the slot writers of _format/sochidx2.pxd stay inlined everywhere):
  table.pyx            the table: get/insert/delete/iteration, the locks
  table_open.pxi       open: argument checks, validate and map, roll back a
                       torn overwrite, heal after an unclean close
  table_grow.pxi       grow and repair's rebuild: rehash, publish, swap
  table_scan.pxi       the linear, interruptible whole-table scan
  table_verify.pxi     verify, stats, repair
  table_iter.pxi       iteration a chunk at a time
  table_lifetime.pxi   close, and what fork() does to an inherited index
  _format/sochidx2.pxd the SOCHIDX2 layout, hash and probe (inline C)
  _fs/files.py         every file and directory-entry operation, the locks
"""
import os
import warnings

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.errno cimport EBUSY, errno
from libc.string cimport memcpy, memset
from posix.mman cimport MS_SYNC, msync
from diskhash._index.convert cimport (
    key_to_u128,
    make_record,
    meta_fields,
    meta_from_object,
    u128_to_int,
)
from diskhash._format.sochidx2 cimport (
    DH_COMPILER_BARRIER,
    DH_SHARED_NEEDS_HEAL,
    HEADER_SIZE,
    MAX_COMPRESSION,
    OFF_NUM_ENTRIES,
    PROBE_FULL,
    PROBE_MISS,
    SLOT_SIZE,
    TAG_EMPTY,
    TAG_OCCUPIED,
    dh_load_acquire,
    dh_load_relaxed,
    dh_shared,
    dh_shared_mutex,
    dh_slot,
    hash_u128,
    needs_grow,
    probe,
    slot_at,
)
from diskhash._index.locks cimport (
    dh_robust_owner_gone,
    dh_thread_id,
    pthread_mutex_consistent,
    pthread_mutex_t,
    pthread_mutex_lock,
    pthread_mutex_unlock,
    pthread_mutex_trylock,
    pthread_rwlock_tryrdlock,
    pthread_rwlock_rdlock,
    pthread_rwlock_unlock,
    pthread_rwlock_trywrlock,
    pthread_rwlock_wrlock,
    pthread_rwlockattr_t,
    pthread_rwlockattr_init,
    pthread_rwlockattr_destroy,
    dh_rwlockattr_prefer_writer,
    pthread_rwlock_init,
    pthread_mutex_init,
    pthread_rwlock_destroy,
    pthread_mutex_destroy,
)

from diskhash.errors import (
    CorruptIndexError,
    DiskHashError,
    IndexClosedError,
    IndexLockedError,
    ReadOnlyIndexError,
)

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

cdef object _MISSING = object()

cdef object _batch = None


cdef object _batch_module():
    """The numpy batch layer, imported on first use (numpy is optional)."""
    global _batch
    if _batch is None:
        from diskhash._index import batch as module
        _batch = module
    return _batch


# The module by concern (textual includes, so the probe and slot writers from
# _format/sochidx2.pxd stay inlined into every caller):
include "table_lifetime.pxi"     # closing; fork safety
include "table_scan.pxi"         # the linear, interruptible whole-table scan
include "table_verify.pxi"       # verify, stats, repair
include "table_grow.pxi"         # grow: rehash, publish, swap
include "table_open.pxi"         # open, heal, recovery
include "table_iter.pxi"         # iteration in chunks


cdef class DiskHashIndex:
    """A persistent map from 128-bit edge ids to ``PayloadMeta`` records.

    ``DiskHashIndex(path, readonly=False, capacity=None, timeout=0.0,
    exclusive=False)`` opens the SOCHIDX2 file at ``path``, creating it (and
    its parent directories) unless ``readonly``.  By default any number of
    processes open it at once: writes take turns on a robust mutex in
    ``<file>.lock`` beside the resolved file (symlinks followed), reads are
    validated by its seqlock and never wait (docs/guide/processes.md).  An
    ``exclusive=True`` open is the only one; a conflicting open waits up to
    ``timeout`` seconds (``None``: forever) and then raises
    ``IndexLockedError``.  ``capacity`` (an int) sizes the table
    for that many entries up front.  See docs/guide/files-and-locks.md for
    symlinks, hard links, odd files and full disks.

    Thread-safe: any number of threads may read while one writes.  Use it as a
    context manager, or call ``close()``: an index never closed warns with
    ``ResourceWarning``.
    """

    def __cinit__(self):
        cdef pthread_rwlockattr_t attr
        self._fd = -1
        self._state = STATE_CLOSED
        self._base = NULL
        pthread_rwlockattr_init(&attr)
        dh_rwlockattr_prefer_writer(&attr)
        if pthread_rwlock_init(&self._map_lock, &attr) != 0:
            pthread_rwlockattr_destroy(&attr)
            raise MemoryError("cannot create the index read/write lock")
        pthread_rwlockattr_destroy(&attr)
        if pthread_mutex_init(&self._write_lock, NULL) != 0:
            pthread_rwlock_destroy(&self._map_lock)
            raise MemoryError("cannot create the index write lock")
        self._locks_ready = True

    def __init__(self, path, *, bint readonly=False, capacity=None, timeout=0.0,
                 bint exclusive=False):
        open_index(self, path, readonly, capacity, timeout, exclusive)

    # -- locking ---------------------------------------------------------------

    cdef int _raise_unusable(self) except -1:
        if self._state == STATE_FORKED:
            raise IndexClosedError(
                f"{self.path}: index was inherited across fork(); open it again in the child")
        raise IndexClosedError(f"{self.path}: index is closed")

    cdef int _read_acquire(self) except -1:
        if self._state != STATE_OPEN:
            self._raise_unusable()
        if pthread_rwlock_tryrdlock(&self._map_lock) != 0:
            with nogil:
                pthread_rwlock_rdlock(&self._map_lock)
        if self._base == NULL:
            pthread_rwlock_unlock(&self._map_lock)
            self._raise_unusable()
        return 0

    cdef void _read_release(self) noexcept nogil:
        pthread_rwlock_unlock(&self._map_lock)

    cdef int _read_begin(self, uint64_t *seq) except -1:
        """``_read_acquire``, then the start of an optimistic read: waits out
        a slot change by another process and re-maps a table file another
        process replaced.  The caller copies what it needs, checks
        ``read_valid(self, seq[0])`` and reads again if that is False."""
        cdef uint64_t s
        cdef double since = 0.0
        cdef int spins = 0
        while True:
            self._read_acquire()
            if self._shared == NULL:
                seq[0] = 0
                return 0
            s = dh_load_acquire(&self._shared.seq)
            if (s & 1) == 0 and dh_load_relaxed(&self._shared.table_gen) == self._table_gen:
                seq[0] = s
                return 0
            self._read_release()
            self._read_wait(s, &since, &spins)

    cdef int _read_wait(self, uint64_t seq, double *since, int *spins) except -1:
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
            self._write_acquire(True)       # EOWNERDEAD: recovers it
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

    cdef int _write_acquire(self, bint block) except -1:
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
                self._recover_dead_writer()
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
                self._sync_table(False)
            self._num_entries = (<uint64_t *>(self._base + OFF_NUM_ENTRIES))[0]
        except BaseException:
            self._write_release()
            raise
        return 0

    cdef void _write_release(self) noexcept nogil:
        if self._xdepth and self._xowner == dh_thread_id():
            return
        if self._shared != NULL:
            self._shared.owner_pid = 0
            pthread_mutex_unlock(<pthread_mutex_t *>dh_shared_mutex(self._shared))
        pthread_mutex_unlock(&self._write_lock)

    cdef int _sync_table(self, bint recovering) except -1:
        """Catch up with other processes (see ``sync_with_others``)."""
        return sync_with_others(self, recovering)

    cdef int _recover_dead_writer(self) except -1:
        return recover_dead_writer(self)

    def writing(self):
        """A context manager holding the writer lock -- across processes too --
        for several calls: ``with idx.writing(): ...`` batches them without
        another process's write in between (and without taking the lock for
        each).  Other threads' and processes' writes wait for the block; reads
        never do.  Re-entrant in the thread that holds it."""
        return _Writing(self)

    def _writing_enter(self):
        if self._xdepth and self._xowner == dh_thread_id():
            self._xdepth += 1
            return
        self._write_acquire(True)
        self._xowner = dh_thread_id()
        self._xdepth = 1

    def _writing_exit(self):
        if not self._xdepth or self._xowner != dh_thread_id():
            raise RuntimeError(f"{self.path}: writing() block left by another thread")
        self._xdepth -= 1
        if self._xdepth == 0:
            self._xowner = 0
            self._write_release()

    cdef void _exclusive_acquire(self) noexcept:
        if pthread_rwlock_trywrlock(&self._map_lock) != 0:
            with nogil:
                pthread_rwlock_wrlock(&self._map_lock)

    cdef bint _exclusive_acquire_unless(self, bint nowait) noexcept:
        """Take the map lock exclusively; with ``nowait``, only if that needs no
        wait (returns False, holding nothing, if a reader has it)."""
        if nowait:
            return pthread_rwlock_trywrlock(&self._map_lock) == 0
        self._exclusive_acquire()
        return True

    cdef void _exclusive_release(self) noexcept nogil:
        pthread_rwlock_unlock(&self._map_lock)

    cdef int _corrupt(self, int64_t code, uint64_t slot) except -1:
        """A probe's failure, for a caller holding the writer lock (the map stays)."""
        return self._corrupt_seen(code, slot, slot_at(self._base, slot).tag, self._num_slots)

    cdef int _corrupt_seen(self, int64_t code, uint64_t slot, uint8_t tag,
                           uint64_t num_slots) except -1:
        """A probe's failure as a reader saw it under the read lock: the tag and
        slot count are passed in, since the map may be swapped or gone by now."""
        if code == PROBE_FULL:
            raise CorruptIndexError(self.path, f"no empty slot in {num_slots} slots: lookups cannot terminate")
        raise CorruptIndexError(self.path, f"slot {slot}: bad tag 0x{tag:02x} (expected 0 or 1)")

    cdef int _bad_compression(self, uint64_t lo, uint64_t hi, uint8_t byte) except -1:
        raise CorruptIndexError(self.path, f"key {u128_to_int(lo, hi)}: unknown compression byte {byte}")

    # -- reads -----------------------------------------------------------------

    def get(self, key, default=None):
        """The ``PayloadMeta`` stored for ``key``, or ``default``."""
        cdef uint64_t lo, hi, empty = 0, num_slots = 0, seq
        cdef dh_slot copy
        cdef int64_t r
        cdef bint ok
        key_to_u128(key, &lo, &hi)
        while True:
            self._read_begin(&seq)
            r = probe(self._base, self._mask, self._seed, lo, hi, &empty)
            if r >= 0:
                copy = slot_at(self._base, r)[0]
            elif r != PROBE_MISS:               # damage: note what was seen, under the lock
                copy = slot_at(self._base, empty)[0]
                num_slots = self._num_slots
            ok = read_valid(self, seq)
            self._read_release()
            if ok:
                break
        if r < 0:
            if r == PROBE_MISS:
                return default
            self._corrupt_seen(r, empty, copy.tag, num_slots)
        return self._record(key, &copy)

    cdef object _record(self, object key, dh_slot *s):
        if s.compression > MAX_COMPRESSION:
            self._bad_compression(s.key_lo, s.key_hi, s.compression)
        if type(key) is not int:
            key = u128_to_int(s.key_lo, s.key_hi)
        return make_record(key, s.compression, s.offset, s.length, s.uncompressed_length)

    def __getitem__(self, key):
        result = self.get(key, _MISSING)
        if result is _MISSING:
            raise KeyError(key)
        return result

    def __contains__(self, key):
        cdef uint64_t lo, hi, empty = 0, seq, num_slots
        cdef int64_t r
        cdef uint8_t tag = 0
        cdef bint ok
        key_to_u128(key, &lo, &hi)
        while True:
            self._read_begin(&seq)
            r = probe(self._base, self._mask, self._seed, lo, hi, &empty)
            num_slots = self._num_slots
            if r < PROBE_MISS:
                tag = slot_at(self._base, empty).tag
            ok = read_valid(self, seq)
            self._read_release()
            if ok:
                break
        if r < PROBE_MISS:
            self._corrupt_seen(r, empty, tag, num_slots)
        return r >= 0

    def __len__(self):
        cdef scan_t sc
        cdef uint64_t seq, n = 0
        cdef bint ok, heal = False
        if self._state != STATE_OPEN:
            self._raise_unusable()
        if self._shared != NULL:
            # The header's count, as the writers of every process keep it.
            while True:
                self._read_begin(&seq)
                n = (<uint64_t *>(self._base + OFF_NUM_ENTRIES))[0]
                heal = (self._shared.flags & DH_SHARED_NEEDS_HEAL) != 0
                ok = read_valid(self, seq)
                self._read_release()
                if ok:
                    break
            if not heal and self._count_ok:
                return n
            memset(&sc, 0, sizeof(sc))      # a killed writer's count, not yet recounted
            self._read_acquire()
            try:
                scan_table(self._base, self._num_slots, self._seed, &sc)
            finally:
                self._read_release()
            return sc.occupied
        if not self._count_ok:
            # A read-only open of a file whose last writer did not close
            # cleanly: the header count may be stale, so count once.
            memset(&sc, 0, sizeof(sc))
            self._read_acquire()
            try:
                scan_table(self._base, self._num_slots, self._seed, &sc)
            finally:
                self._read_release()
            self._num_entries = sc.occupied
            self._count_ok = True
        return self._num_entries

    def _chunk(self, uint64_t start, int what, uint64_t generation):
        """Records of the occupied slots from ``start`` (see ``read_chunk``)."""
        return read_chunk(self, start, what, generation)

    def _iter_start(self):
        """(generation, num_slots) for a new iteration."""
        if self._state != STATE_OPEN:
            self._raise_unusable()
        return self._generation, self._num_slots

    def _iterate(self, int what):
        generation, num_slots = self._iter_start()
        cdef uint64_t start = 0
        cdef uint64_t gen = generation
        while start < num_slots:
            chunk = self._chunk(start, what, generation)
            start = chunk.next_slot
            for item in chunk.items:
                # A chunk is copied ahead: re-check before each item, so a key
                # deleted (or the index closed) meanwhile is never yielded.
                if self._generation != gen or self._state != STATE_OPEN:
                    self._iter_start()          # raises if closed
                    raise RuntimeError(f"{self.path}: index changed size during iteration")
                yield item

    def __iter__(self):
        return self._iterate(0)

    def keys(self):
        """An iterator over the keys (ints), in slot order."""
        return self._iterate(0)

    def values(self):
        """An iterator over the ``PayloadMeta`` records, in slot order."""
        return self._iterate(1)

    def items(self):
        """An iterator over ``(key, PayloadMeta)`` pairs, in slot order."""
        return self._iterate(2)

    # -- writes ----------------------------------------------------------------

    def insert(self, key, meta):
        """Store ``meta`` under ``key`` (overwriting), growing the table if needed.

        ``meta.edge_id`` must equal ``key``.  Durable after ``save()``.
        """
        cdef uint64_t lo, hi
        cdef meta_fields m
        key_to_u128(key, &lo, &hi)
        meta_from_object(meta, lo, hi, key, &m)
        self._write_acquire(True)
        try:
            self._insert_locked(lo, hi, &m)
        finally:
            self._write_release()

    def _try_insert(self, key, meta):
        """Insert only if it cannot block: returns False (nothing done) if a
        writer holds the lock, a long read holds the map lock, or the insert
        would have to grow the table.

        The async facade runs this inline and falls back to a worker thread.
        """
        cdef uint64_t lo, hi, empty = 0
        cdef meta_fields m
        key_to_u128(key, &lo, &hi)
        meta_from_object(meta, lo, hi, key, &m)
        if self._write_acquire(False):
            return False
        try:
            if needs_grow(self._num_entries, self._num_slots):
                if probe(self._base, self._mask, self._seed, lo, hi, &empty) < 0:
                    return False
            return self._insert_locked(lo, hi, &m, True) == 0
        finally:
            self._write_release()

    cdef int _insert_locked(self, uint64_t lo, uint64_t hi, meta_fields *m,
                            bint nowait=False) except -1:
        """Insert with the writer lock held; returns 0.

        With ``nowait`` (the async fast path, running on an event loop) it
        returns 1 having changed nothing if the map lock is busy -- a thread
        in a long read (``stats()``, ``verify()``, a batch lookup) holds it
        shared -- instead of blocking the loop until that read ends.
        """
        cdef uint64_t empty = 0
        cdef int64_t r = probe(self._base, self._mask, self._seed, lo, hi, &empty)
        cdef dh_slot *d
        if r >= 0:
            d = slot_at(self._base, r)
            if not self._exclusive_acquire_unless(nowait):
                return 1
            change_begin(self._shared)
            overwrite_slot(self._undo, d, <uint64_t>r, self._num_slots, m)
            change_end(self._shared)
            self._exclusive_release()
            return 0
        if r != PROBE_MISS:
            self._corrupt(r, empty)
        if needs_grow(self._num_entries, self._num_slots):
            self._rebuild_locked(self._num_slots * 2, False)
            r = probe(self._base, self._mask, self._seed, lo, hi, &empty)
            if r != PROBE_MISS:
                self._corrupt(r, empty)
        d = slot_at(self._base, empty)
        if not self._exclusive_acquire_unless(nowait):
            return 1
        change_begin(self._shared)
        fill_slot(d, lo, hi, m)
        self._num_entries += 1
        self._generation += 1
        self._store_count()
        change_end(self._shared)
        self._exclusive_release()
        return 0

    cdef void _store_count(self) noexcept nogil:
        (<uint64_t *>(self._base + OFF_NUM_ENTRIES))[0] = self._num_entries

    def delete(self, key):
        """Remove ``key``; returns whether it was present.

        Backward-shift deletion: the entries after it in its run move back, so
        the file needs no tombstones and stays valid for any SOCHIDX2 reader.
        """
        cdef uint64_t lo, hi
        key_to_u128(key, &lo, &hi)
        self._write_acquire(True)
        try:
            return self._delete_locked(lo, hi, NULL)
        finally:
            self._write_release()

    cdef bint _delete_locked(self, uint64_t lo, uint64_t hi, dh_slot *removed) except -1:
        cdef uint64_t empty = 0, i, j, h, _n
        cdef uint64_t mask = self._mask
        cdef int64_t r = probe(self._base, mask, self._seed, lo, hi, &empty)
        cdef dh_slot *hole
        cdef dh_slot *s
        if r == PROBE_MISS:
            return False
        if r < 0:
            self._corrupt(r, empty)
        i = <uint64_t>r
        if removed != NULL:
            removed[0] = slot_at(self._base, i)[0]
        self._exclusive_acquire()
        change_begin(self._shared)
        j = i
        for _n in range(self._num_slots):
            j = (j + 1) & mask
            s = slot_at(self._base, j)
            if s.tag != TAG_OCCUPIED:
                break
            h = hash_u128(s.key_lo, s.key_hi, self._seed) & mask
            if ((j - h) & mask) >= ((j - i) & mask):
                # Move s back into the hole; the hole is hidden while rewritten.
                hole = slot_at(self._base, i)
                hole.tag = TAG_EMPTY
                DH_COMPILER_BARRIER()
                memcpy(<unsigned char *>hole + 1, <unsigned char *>s + 1, SLOT_SIZE - 1)
                DH_COMPILER_BARRIER()
                hole.tag = TAG_OCCUPIED
                i = j
        hole = slot_at(self._base, i)
        hole.tag = TAG_EMPTY
        DH_COMPILER_BARRIER()
        memset(<unsigned char *>hole + 1, 0, SLOT_SIZE - 1)
        self._num_entries -= 1
        self._generation += 1
        self._store_count()
        change_end(self._shared)
        self._exclusive_release()
        return True

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

    def __setitem__(self, key, meta):
        # Defining __delitem__ alone makes Cython answer ``idx[k] = v`` with
        # NotImplementedError; Python's protocol for "no item assignment" is TypeError.
        raise TypeError("DiskHashIndex does not support item assignment: use "
                        "insert(key, meta) (it checks meta.edge_id against the key)")

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its record (``default``, or ``KeyError``, if absent)."""
        cdef uint64_t lo, hi
        cdef dh_slot removed
        cdef bint found
        key_to_u128(key, &lo, &hi)
        self._write_acquire(True)
        try:
            found = self._delete_locked(lo, hi, &removed)
        finally:
            self._write_release()
        if not found:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return self._record(key, &removed)

    def reserve(self, capacity):
        """Grow now, if needed, so ``capacity`` entries fit without another grow."""
        capacity = _entry_count(capacity, "capacity")
        self._write_acquire(True)
        try:
            if capacity > self._num_entries:
                self._ensure_room_locked(capacity - self._num_entries)
        finally:
            self._write_release()

    cdef int _ensure_room_locked(self, uint64_t extra) except -1:
        cdef uint64_t want = slots_for(self._num_entries + extra)
        if want > self._num_slots:
            self._rebuild_locked(want, False)
        return 0

    cdef int _rebuild_locked(self, uint64_t new_slots, bint salvage, uint64_t new_seed=0) except -1:
        """Rebuild into ``new_slots`` slots and swap (see ``rebuild_table``)."""
        return rebuild_table(self, new_slots, salvage, new_seed)

    def save(self):
        """Make every write before this call durable (msync of the whole map).

        After ``save()`` returns, those writes survive a process crash, a
        kernel crash and a power loss.
        """
        self._write_acquire(True)
        try:
            self._sync_locked()
        finally:
            self._write_release()

    def _sync_locked(self):
        cdef int rc
        cdef size_t size = HEADER_SIZE + self._num_slots * SLOT_SIZE
        with nogil:
            rc = msync(self._base, size, MS_SYNC)
        if rc != 0:
            raise OSError(errno, f"msync failed: {os.strerror(errno)}", self.path)

    # -- batch calls (numpy; implemented in _batch) ----------------------------

    def get_many(self, keys):
        """Look up a batch: a structured array of ``RESULT_DTYPE``, one row per key.

        ``keys``: ``uint64`` array (ids < 2**64) or ``KEY_DTYPE`` (lo, hi).
        One call, the GIL released for the whole batch.
        """
        return _batch_module().get_many(self, keys)

    def contains_many(self, keys):
        """A ``bool`` array: which of ``keys`` are present."""
        return _batch_module().contains_many(self, keys)

    def insert_many(self, keys, records):
        """Insert a batch (``records``: ``META_DTYPE``), all validated before any write."""
        return _batch_module().insert_many(self, keys, records)

    # -- whole-table operations ------------------------------------------------

    def verify(self):
        """Check the whole table; raise ``CorruptIndexError`` listing every defect.

        Checks tags, compression bytes, reserved bytes, that every key is
        reachable from its home slot, duplicate keys, the header count and
        reserved header bytes, and that an empty slot exists.  O(slots), and
        interruptible (Ctrl-C) however big the table.
        """
        verify_table(self)

    def stats(self):
        """Entries, slots, load factor, file bytes, longest and mean probe.  O(slots)."""
        return table_stats(self)

    def repair(self):
        """Rebuild a valid table from every readable entry; report what was dropped.

        Slots with a bad tag or compression byte are dropped (and listed);
        unreachable entries are re-homed, duplicates kept once, reserved bytes
        zeroed, the count fixed, a zero seed replaced.  The rebuilt file
        replaces the old one atomically, as a grow does.  Returns a
        ``RepairReport``.
        """
        return repair_table(self)

    # -- lifetime --------------------------------------------------------------

    def close(self):
        """Flush (if writable), record a clean close, unmap, unlock.  Idempotent.

        Other threads blocked on the index get ``IndexClosedError``.
        """
        close_index(self)

    def _close_unsynced(self):
        """``close()`` without the msync: the writes stay in the page cache,
        which a process crash keeps (``PayloadStore(sync="never")``)."""
        close_index(self, False)

    @property
    def closed(self):
        return self._state != STATE_OPEN

    @property
    def num_slots(self):
        return self._num_slots

    @property
    def seed(self):
        return self._seed

    @property
    def capacity(self):
        """Entries the table holds before the next grow."""
        return self._num_slots * 3 // 4

    def __enter__(self):
        if self._state != STATE_OPEN:
            self._raise_unusable()
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __del__(self):
        if self._state == STATE_OPEN:
            warnings.warn(f"unclosed DiskHashIndex {self.path!r}", ResourceWarning, source=self)
            try:
                self.close()
            except Exception:
                pass
        elif self._state == STATE_FORKED:
            release_resources(self, False)

    def __dealloc__(self):
        if self._locks_ready and self._state != STATE_FORKED:
            pthread_rwlock_destroy(&self._map_lock)
            pthread_mutex_destroy(&self._write_lock)

    @property
    def shared(self):
        """Whether other processes may have this index open at the same time
        (the default; ``exclusive=True`` opens are the only one)."""
        return not self.exclusive

    def __repr__(self):
        state = "closed" if self._state != STATE_OPEN else (
            f"{self._num_entries} entries, {self._num_slots} slots")
        mode = ", readonly" if self.readonly else ""
        return f"<DiskHashIndex {self.path!r} ({state}{mode})>"

    def __reduce__(self):
        raise TypeError("a DiskHashIndex cannot be pickled; pass its path and open it again")


def repair(path):
    """Open the index at ``path`` for writing, repair it, close it; returns the report.

    Raises ``FileNotFoundError`` (and creates nothing) if there is no index
    at ``path``: a writable open would create an empty one.
    """
    name = os.path.abspath(os.fsdecode(path)) if os.fsdecode(path) else ""
    if name and not _files.check_existing(os.path.realpath(name), name):
        raise FileNotFoundError(2, "no index file to repair", name)
    with DiskHashIndex(path) as idx:
        return idx.repair()


cdef class _Writing:
    """``with idx.writing():`` (see ``DiskHashIndex.writing``)."""
    cdef DiskHashIndex idx

    def __cinit__(self, DiskHashIndex idx not None):
        self.idx = idx

    def __enter__(self):
        self.idx._writing_enter()
        return self.idx

    def __exit__(self, *exc_info):
        self.idx._writing_exit()
