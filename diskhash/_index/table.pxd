# The table object, declared so batch.pyx and the store can cimport it and reach its C fields.
from libc.stdint cimport int64_t, uint8_t, uint64_t
from posix.mman cimport madvise

from diskhash._index.convert cimport meta_fields
from diskhash._format.sochidx2 cimport (
    DH_COMPILER_BARRIER,
    DH_UNDO_ARMED,
    TAG_OCCUPIED,
    dh_load_acquire,
    dh_load_relaxed,
    dh_seq_begin,
    dh_seq_end,
    dh_seq_valid,
    dh_shared,
    dh_slot,
    dh_undo,
)
from diskhash._index.locks cimport pthread_mutex_t, pthread_rwlock_t


cdef class DiskHashIndex:
    cdef readonly str path
    cdef str _file              # path resolved (symlinks followed): where the I/O goes
    cdef readonly bint readonly
    cdef readonly object recovery
    cdef object _mmap
    cdef const unsigned char[::1] _view
    cdef unsigned char *_base
    cdef const unsigned char[::1] _undo_view
    cdef dh_undo *_undo
    # The lock file's shared page (docs/guide/processes.md); NULL when this
    # open is the only one by construction (exclusive=True) or has no page.
    cdef dh_shared *_shared
    cdef uint64_t _table_gen    # the shared table_gen this object's map is of
    cdef object _timeout        # the open's timeout (a read-only reader's wait for recovery)
    cdef readonly bint exclusive
    cdef unsigned long _xowner  # thread inside `with writing()`, 0 if none
    cdef Py_ssize_t _xdepth
    cdef uint64_t _num_slots
    cdef uint64_t _mask
    cdef uint64_t _seed
    cdef uint64_t _num_entries
    cdef uint64_t _generation
    cdef bint _count_ok
    cdef int _fd
    cdef int _state
    cdef bint _locks_ready
    cdef pthread_rwlock_t _map_lock
    cdef pthread_mutex_t _write_lock
    cdef object _lock
    cdef object _resident_budget    # resident=: None, or the budget in bytes
    cdef readonly object resident   # "locked", "prefetched" or None (table_resident.pxi)
    cdef object _retiring       # locks of replaced maps still being closed (retire_map)
    cdef object __weakref__

    cdef int _raise_unusable(self) except -1
    cdef int _read_acquire(self) except -1
    cdef int _read_begin(self, uint64_t *seq) except -1
    cdef void _read_release(self) noexcept nogil
    cdef int _write_acquire(self, bint block) except -1
    cdef void _write_release(self) noexcept nogil
    cdef void _exclusive_acquire(self) noexcept
    cdef bint _exclusive_acquire_unless(self, bint nowait) noexcept
    cdef void _exclusive_release(self) noexcept nogil
    cdef int _corrupt(self, int64_t code, uint64_t slot) except -1
    cdef int _corrupt_seen(self, int64_t code, uint64_t slot, uint8_t tag, uint64_t num_slots) except -1
    cdef int _bad_compression(self, uint64_t lo, uint64_t hi, uint8_t byte) except -1
    cdef int _insert_locked(self, uint64_t lo, uint64_t hi, meta_fields *m, bint nowait=*) except -1
    cdef int _rebuild_locked(self, uint64_t new_slots, bint salvage, uint64_t new_seed=*) except -1
    cdef int _ensure_room_locked(self, uint64_t extra) except -1
    cdef void _store_count(self) noexcept nogil
    cdef object _record(self, object key, dh_slot *s)
    cdef bint _delete_locked(self, uint64_t lo, uint64_t hi, dh_slot *removed) except -1


# The seqlock around slot changes (another process's readers retry a read
# that overlapped one).  The caller holds the cross-process writer mutex
# (and the map lock exclusively); ``sh`` is NULL in exclusive mode.
cdef inline void change_begin(dh_shared *sh) noexcept nogil:
    if sh != NULL:
        dh_seq_begin(&sh.seq)

cdef inline void change_end(dh_shared *sh) noexcept nogil:
    if sh != NULL:
        dh_seq_end(&sh.seq)

# The end of an optimistic read begun with ``_read_begin``: whether no writer
# of another process changed slots meanwhile (else the caller reads again).
cdef inline bint read_valid(DiskHashIndex idx, uint64_t seq) noexcept nogil:
    return idx._shared == NULL or dh_seq_valid(&idx._shared.seq, seq)


# Overwrite the record in occupied slot `i` so that a crash at any instant
# leaves either the old record or the new one: the old bytes go to the undo
# page (armed after they are complete), the fields are stored, the page is
# disarmed.  A writable open that finds it armed puts the old bytes back.
# The caller holds the writer lock and the map lock exclusively.
cdef inline void overwrite_slot(dh_undo *undo, dh_slot *d, uint64_t i, uint64_t num_slots,
                                const meta_fields *m) noexcept nogil:
    if undo != NULL:
        undo.slot = i
        undo.num_slots = num_slots
        undo.old = d[0]
        DH_COMPILER_BARRIER()
        undo.armed = DH_UNDO_ARMED
        DH_COMPILER_BARRIER()
    d.compression = m.compression
    d.length = m.length
    d.uncompressed_length = m.uncompressed_length
    d.offset = m.offset
    if undo != NULL:
        DH_COMPILER_BARRIER()
        undo.armed = 0


# A new entry in empty slot `d`: every field first, the tag last, so neither a
# reader nor a crash ever sees an occupied slot that is half written.  The
# caller holds the writer lock and the map lock exclusively.
cdef inline void fill_slot(dh_slot *d, uint64_t lo, uint64_t hi, const meta_fields *m) noexcept nogil:
    d.compression = m.compression
    d.reserved0 = 0
    d.length = m.length
    d.uncompressed_length = m.uncompressed_length
    d.reserved1 = 0
    d.key_lo = lo
    d.key_hi = hi
    d.offset = m.offset
    DH_COMPILER_BARRIER()
    d.tag = TAG_OCCUPIED


cdef enum:
    MADV_POPULATE_WRITE = 23    # Linux 5.14+

# Fault in every page of a map about to be written all over (the new table of
# a dense grow, a bulk insert_many) in one call rather than one fault per page.
# Best effort: an older kernel refuses, and the faults happen one by one.  Not
# for sparse writes: every populated page is dirty, and msync writes them all.
cdef inline void populate_for_write(unsigned char *base, size_t size) noexcept nogil:
    madvise(base, size, MADV_POPULATE_WRITE)
