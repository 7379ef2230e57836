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
  table.pyx            the table: get/insert/delete/iteration, the short locks
  table_locks.pxi      the writer locks across threads and processes, recovery
                       after a dead writer, a reader's wait for a slot change
  table_slots.pxi      insert, delete and try_insert: slot changes under the
                       writer lock
  table_open.pxi       open: argument checks, validate and map, roll back a
                       torn overwrite, heal after an unclean close
  table_grow.pxi       grow and repair's rebuild: rehash, publish, swap
  table_scan.pxi       the linear, interruptible whole-table scan
  table_verify.pxi     verify, stats, repair
  table_iter.pxi       iteration a chunk at a time (and the async index's steps)
  table_lifetime.pxi   close, and what fork() does to an inherited index
  _format/sochidx2.pxd the SOCHIDX2 layout, hash and probe (inline C)
  _fs/files.py         every file and directory-entry operation, the locks
"""
import os
import warnings

from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.errno cimport errno
from posix.mman cimport MS_SYNC, msync
from diskhash._index.convert cimport (
    key_to_u128,
    make_record,
    meta_fields,
    meta_from_object,
    u128_to_int,
)
from diskhash._format.sochidx2 cimport (
    HEADER_SIZE,
    MAX_COMPRESSION,
    OFF_NUM_ENTRIES,
    PROBE_FULL,
    PROBE_MISS,
    SLOT_SIZE,
    dh_load_acquire,
    dh_load_relaxed,
    dh_shared_mutex,
    dh_slot,
    probe,
    slot_at,
)
from diskhash._index.locks cimport (
    dh_thread_id,
    pthread_mutex_t,
    pthread_mutex_unlock,
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
    IndexClosedError,
)


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
include "table_locks.pxi"        # the writer locks, dead-writer recovery, a blocked read
include "table_slots.pxi"        # insert, delete: slot changes under the writer lock
include "table_lifetime.pxi"     # closing; fork safety
include "table_scan.pxi"         # the linear, interruptible whole-table scan
include "table_verify.pxi"       # verify, stats, repair
include "table_grow.pxi"         # grow: rehash, publish, swap
include "table_open.pxi"         # open, heal, recovery
include "table_iter.pxi"         # iteration in chunks
include "table_resident.pxi"     # resident=: the map locked in memory


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
                 bint exclusive=False, resident=None):
        self._resident_budget = resident_budget(resident)
        open_index(self, path, readonly, capacity, timeout, exclusive)

    def set_resident(self, resident):
        """Keep the table map in memory (``resident``: True, or a budget in
        bytes the table file must fit), or stop (None/False); as ``resident=``
        of the constructor.  The ``resident`` attribute tells what was done."""
        set_resident(self, resident_budget(resident))

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
            read_wait(self, s, &since, &spins)

    cdef int _write_acquire(self, bint block) except -1:
        """Take the writer lock(s); 1 if busy and not ``block`` (see ``write_acquire``)."""
        return write_acquire(self, block)

    cdef void _write_release(self) noexcept nogil:
        if self._xdepth and self._xowner == dh_thread_id():
            return
        if self._shared != NULL:
            self._shared.owner_pid = 0
            pthread_mutex_unlock(<pthread_mutex_t *>dh_shared_mutex(self._shared))
        pthread_mutex_unlock(&self._write_lock)

    def writing(self):
        """A context manager holding the writer lock -- across processes too --
        for several calls: ``with idx.writing(): ...`` batches them without
        another process's write in between (and without taking the lock for
        each).  Other threads' and processes' writes wait for the block; reads
        never do.  Re-entrant in the thread that holds it."""
        return _Writing(self)

    def _writing_enter(self):
        writing_enter(self)

    def _writing_exit(self):
        writing_exit(self)

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
        return count_entries(self)

    def __iter__(self):
        return _iterate(self, 0)

    def keys(self):
        """An iterator over the keys (ints), in slot order."""
        return _iterate(self, 0)

    def values(self):
        """An iterator over the ``PayloadMeta`` records, in slot order."""
        return _iterate(self, 1)

    def items(self):
        """An iterator over ``(key, PayloadMeta)`` pairs, in slot order."""
        return _iterate(self, 2)

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
            insert_locked(self, lo, hi, &m, False)
        finally:
            self._write_release()

    cdef int _insert_locked(self, uint64_t lo, uint64_t hi, meta_fields *m,
                            bint nowait=False) except -1:
        """Insert with the writer lock held (see ``insert_locked``)."""
        return insert_locked(self, lo, hi, m, nowait)

    cdef void _store_count(self) noexcept nogil:
        # (called where a key was added or removed: other processes'
        # iterations learn of it by key_changes, as this one's by _generation)
        (<uint64_t *>(self._base + OFF_NUM_ENTRIES))[0] = self._num_entries
        if self._shared != NULL:
            dh_store_release(&self._shared.key_changes, self._shared.key_changes + 1)

    def delete(self, key):
        """Remove ``key``; returns whether it was present.

        Backward-shift deletion: the entries after it in its run move back, so
        the file needs no tombstones and stays valid for any SOCHIDX2 reader.
        """
        cdef uint64_t lo, hi
        key_to_u128(key, &lo, &hi)
        self._write_acquire(True)
        try:
            return delete_locked(self, lo, hi, NULL)
        finally:
            self._write_release()

    cdef bint _delete_locked(self, uint64_t lo, uint64_t hi, dh_slot *removed) except -1:
        return delete_locked(self, lo, hi, removed)

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
            found = delete_locked(self, lo, hi, &removed)
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
