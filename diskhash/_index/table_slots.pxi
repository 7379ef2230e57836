# Included by table.pyx (one module, so the probe and the slot writers of
# _format/sochidx2.pxd and table.pxd stay inlined): the changes of slots,
# each made with the writer lock held -- insert (a new slot or an overwrite,
# growing first if needed), delete by backward shift -- and try_insert, the
# insert that never blocks (for the async index and the store's inline put).
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memset
from diskhash._index.convert cimport key_to_u128, meta_fields, meta_from_object
from diskhash._format.sochidx2 cimport (
    DH_COMPILER_BARRIER,
    PROBE_MISS,
    SLOT_SIZE,
    TAG_EMPTY,
    TAG_OCCUPIED,
    dh_slot,
    hash_u128,
    needs_grow,
    probe,
    slot_at,
)


cdef inline int insert_locked(DiskHashIndex self, uint64_t lo, uint64_t hi, meta_fields *m,
                              bint nowait) except -1:
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


cdef inline bint delete_locked(DiskHashIndex self, uint64_t lo, uint64_t hi, dh_slot *removed) except -1:
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


def try_insert(DiskHashIndex self, key, meta):
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
        return insert_locked(self, lo, hi, &m, True) == 0
    finally:
        self._write_release()
