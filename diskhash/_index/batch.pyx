# cython: language_level=3
"""Batch calls: numpy arrays in, numpy arrays out, one Python call per batch.

numpy is used only at Python level (validation, allocation); the loops reach
the arrays' memory through ``unsigned char[::1]`` views cast to C structs that
match ``_dtypes`` (checked at import), so building diskhash needs no numpy.

Locking is ``_index``'s: lookups hold ``_map_lock`` shared per chunk of keys
(so a grow's swap is never starved) and keep the GIL released for the whole
batch; ``insert_many`` holds ``_write_lock`` for the batch and takes
``_map_lock`` exclusively per chunk of slot stores, so readers keep going.
Slots are written by the same ``fill_slot``/``overwrite_slot`` as ``insert``
(fields, then the tag, then the header count; overwrites through the undo page).
``insert_many`` is all or nothing: every slot it writes is logged, and a batch
that meets damage (or a record changed under it) mid-way is rolled back, last
write first, before the error is raised.

Lookups overlap their memory misses: the home slot of the key ``distance``
positions ahead is prefetched while the current key is probed
(``benchmarks/prefetch_distance.py`` measured the default).
"""
from cpython.mem cimport PyMem_RawFree, PyMem_RawMalloc
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memset

from diskhash._format.sochidx2 cimport (
    DH_COMPILER_BARRIER,
    DH_PREFETCH,
    HEADER_SIZE,
    MAX_COMPRESSION,
    PROBE_BADTAG,
    PROBE_FULL,
    PROBE_MISS,
    SLOT_SIZE,
    TAG_EMPTY,
    dh_slot,
    hash_u128,
    needs_grow,
    probe_from,
    slot_at,
)
from diskhash._index.convert cimport meta_fields
from diskhash._index.table cimport (
    DiskHashIndex,
    change_begin,
    change_end,
    fill_slot,
    overwrite_slot,
    populate_for_write,
    read_valid,
)
from diskhash._index.locks cimport pthread_rwlock_unlock, pthread_rwlock_wrlock

from diskhash._index.dtypes import KEY_DTYPE as _KEY_DTYPE
from diskhash._index.dtypes import META_DTYPE as _META_DTYPE
from diskhash._index.dtypes import RESULT_DTYPE as _RESULT_DTYPE
from diskhash._index.dtypes import np as _np
from diskhash.errors import KeyRangeError

cdef extern from *:
    """
    #include <stddef.h>
    typedef struct { uint64_t lo; uint64_t hi; } dh_key;           /* KEY_DTYPE */
    typedef struct {                                               /* RESULT_DTYPE */
        uint8_t found; uint8_t compression; uint16_t pad0;
        uint32_t length; uint32_t uncompressed_length; uint32_t pad1;
        uint64_t offset;
    } dh_result;
    typedef struct {                                               /* META_DTYPE */
        uint64_t offset; uint32_t length; uint8_t compression; uint8_t pad0[3];
        uint32_t uncompressed_length; uint32_t pad1;
    } dh_meta;
    static const Py_ssize_t dh_batch_layout[14] = {
        sizeof(dh_key), offsetof(dh_key, lo), offsetof(dh_key, hi),
        sizeof(dh_result), offsetof(dh_result, found), offsetof(dh_result, offset),
        offsetof(dh_result, length), offsetof(dh_result, compression),
        offsetof(dh_result, uncompressed_length),
        sizeof(dh_meta), offsetof(dh_meta, offset), offsetof(dh_meta, length),
        offsetof(dh_meta, compression), offsetof(dh_meta, uncompressed_length),
    };
    #if defined(__GNUC__)
    #define DH_PREFETCH_W(p) __builtin_prefetch((p), 1, 1)
    #else
    #define DH_PREFETCH_W(p) ((void)0)
    #endif
    """
    ctypedef struct dh_result:
        uint8_t found
        uint8_t compression
        uint16_t pad0
        uint32_t length
        uint32_t uncompressed_length
        uint32_t pad1
        uint64_t offset
    ctypedef struct dh_meta:
        uint64_t offset
        uint32_t length
        uint8_t compression
        uint32_t uncompressed_length
    const Py_ssize_t dh_batch_layout[14]
    void DH_PREFETCH_W(const void *p) nogil


def _layout(dtype):
    return [dtype.itemsize] + [dtype.fields[name][1] for name in dtype.names]


if _layout(_KEY_DTYPE) + _layout(_RESULT_DTYPE) + _layout(_META_DTYPE) != [
        dh_batch_layout[k] for k in range(14)]:
    raise ImportError("diskhash._index.batch: the C structs do not match diskhash._index.dtypes")


cdef enum:
    RING = 128                # ring of precomputed home slots (lookups)
    RING_MASK = RING - 1
    MAX_DISTANCE = 64
    READ_CHUNK = 4096         # keys per shared hold of the map lock
    WRITE_CHUNK = 256         # keys per exclusive hold of the map lock
    FAIL_NONE = 0
    FAIL_COMPRESSION = 1      # a hit whose compression byte is unknown (corrupt)
    FAIL_CLOSED = 2           # the index was closed while the batch ran
    FAIL_GROW = 3             # insert: the table is full (guard: room is made up front)
    FAIL_RECORD = 4           # insert: a record changed under us to a bad compression
    POPULATE_RATIO = 8        # prefault the map when keys * 8 >= slots

# Home slots of the key this many positions ahead are prefetched; chosen with
# benchmarks/prefetch_distance.py (1M and 10M entries).
cdef Py_ssize_t _distance = 16


def prefetch_distance():
    """Keys between a prefetched home slot and its probe (0: no prefetch)."""
    return _distance


def set_prefetch_distance(Py_ssize_t distance):
    """Set the prefetch distance (benchmarks/prefetch_distance.py uses it)."""
    global _distance
    if distance < 0 or distance > MAX_DISTANCE:
        raise ValueError(f"prefetch distance must be in [0, {MAX_DISTANCE}], got {distance}")
    _distance = distance


ctypedef struct fail_t:
    int code                  # FAIL_* or a PROBE_* code
    uint64_t slot
    uint64_t num_slots
    uint8_t byte              # the bad tag or compression byte
    uint64_t lo
    uint64_t hi


# One slot write of insert_many, as needed to undo it: the slot, whether it
# was empty before (undo empties it again), else the record it held.
ctypedef struct batch_write:
    uint64_t slot
    uint64_t offset
    uint32_t length
    uint32_t uncompressed_length
    uint8_t compression
    uint8_t filled


cdef void rollback(DiskHashIndex idx, const batch_write *log, Py_ssize_t count) noexcept nogil:
    """Undo ``count`` logged writes, last first; the caller holds ``_write_lock``.

    Each write filled an empty slot or overwrote a record, never moved an
    entry, so undoing them in reverse order gives back the table as it was,
    slot for slot.
    """
    cdef Py_ssize_t j
    cdef dh_slot *d
    cdef meta_fields mf
    cdef uint64_t num_slots = idx._num_slots
    if count == 0:
        return
    pthread_rwlock_wrlock(&idx._map_lock)
    change_begin(idx._shared)
    for j in range(count - 1, -1, -1):
        d = slot_at(idx._base, log[j].slot)
        if log[j].filled:
            d.tag = TAG_EMPTY
            DH_COMPILER_BARRIER()
            memset(<unsigned char *>d + 1, 0, SLOT_SIZE - 1)
            idx._num_entries -= 1
        else:
            mf.offset = log[j].offset
            mf.length = log[j].length
            mf.uncompressed_length = log[j].uncompressed_length
            mf.compression = log[j].compression
            overwrite_slot(idx._undo, d, log[j].slot, num_slots, &mf)
    idx._generation += 1
    idx._store_count()
    change_end(idx._shared)
    pthread_rwlock_unlock(&idx._map_lock)


cdef inline void key_at(const uint64_t *kp, bint wide, Py_ssize_t i,
                        uint64_t *lo, uint64_t *hi) noexcept nogil:
    if wide:
        lo[0] = kp[2 * i]
        hi[0] = kp[2 * i + 1]
    else:
        lo[0] = kp[i]
        hi[0] = 0


cdef inline void prefetch_slot(const unsigned char *base, uint64_t i) noexcept nogil:
    # A 40-byte slot may straddle two cache lines: fetch both ends.
    cdef const unsigned char *p = <const unsigned char *>slot_at(base, i)
    DH_PREFETCH(p)
    DH_PREFETCH(p + SLOT_SIZE - 1)


cdef inline void prefetch_slot_w(unsigned char *base, uint64_t i) noexcept nogil:
    cdef unsigned char *p = <unsigned char *>slot_at(base, i)
    DH_PREFETCH_W(p)
    DH_PREFETCH_W(p + SLOT_SIZE - 1)


cdef Py_ssize_t lookup_range(const unsigned char *base, uint64_t mask, uint64_t seed,
                             const uint64_t *kp, bint wide, Py_ssize_t start, Py_ssize_t end,
                             Py_ssize_t dist, dh_result *res, uint8_t *hit,
                             fail_t *fail) noexcept nogil:
    """Look up keys [start, end) into ``res`` (get_many) or ``hit`` (contains_many).

    Returns ``end``, or the position of a key that met damage (``fail`` says what).
    """
    cdef uint64_t homes[RING]
    cdef uint64_t lo, hi, h, empty = 0
    cdef Py_ssize_t i, j
    cdef int64_t r
    cdef const dh_slot *s
    cdef dh_result *o
    for j in range(start, min(start + dist, end)):
        key_at(kp, wide, j, &lo, &hi)
        h = hash_u128(lo, hi, seed) & mask
        homes[j & RING_MASK] = h
        prefetch_slot(base, h)
    for i in range(start, end):
        j = i + dist
        if j < end:
            key_at(kp, wide, j, &lo, &hi)
            h = hash_u128(lo, hi, seed) & mask
            homes[j & RING_MASK] = h
            prefetch_slot(base, h)
        elif dist == 0:
            key_at(kp, wide, i, &lo, &hi)
            homes[i & RING_MASK] = hash_u128(lo, hi, seed) & mask
        key_at(kp, wide, i, &lo, &hi)
        r = probe_from(base, mask, homes[i & RING_MASK], lo, hi, &empty)
        if r >= 0:
            s = slot_at(base, <uint64_t>r)
            if res == NULL:
                hit[i] = 1
                continue
            if s.compression > MAX_COMPRESSION:
                fail.code = FAIL_COMPRESSION
                fail.byte = s.compression
                fail.lo = lo
                fail.hi = hi
                return i
            o = &res[i]
            o.found = 1
            o.compression = s.compression
            o.pad0 = 0
            o.length = s.length
            o.uncompressed_length = s.uncompressed_length
            o.pad1 = 0
            o.offset = s.offset
        elif r == PROBE_MISS:
            if res == NULL:
                hit[i] = 0
            else:
                o = &res[i]
                o.found = 0
                o.compression = 0
                o.pad0 = 0
                o.length = 0
                o.uncompressed_length = 0
                o.pad1 = 0
                o.offset = 0
        else:
            fail.code = <int>r
            fail.slot = empty
            fail.num_slots = mask + 1
            if r == PROBE_BADTAG:
                fail.byte = slot_at(base, empty).tag
            return i
    return end


cdef Py_ssize_t insert_range(DiskHashIndex idx, const uint64_t *kp, bint wide,
                             const dh_meta *recs, Py_ssize_t start, Py_ssize_t end,
                             Py_ssize_t dist, fail_t *fail, batch_write *log) noexcept nogil:
    """Insert keys [start, end); the caller holds ``_write_lock``.

    Returns ``end``, or the position of the first key not inserted: one that
    needs a grow first (``FAIL_GROW``) or met damage.  Probing needs no map
    lock (only this writer changes slots); the stores take it exclusively,
    one chunk of keys at a time.  Write number i - start goes to ``log[i - start]``
    (one write per key), so keys [start, returned position) are in the log.
    """
    cdef batch_write *w
    cdef dh_slot *d
    cdef uint64_t homes[WRITE_CHUNK]
    cdef unsigned char *base = idx._base
    cdef uint64_t mask = idx._mask, seed = idx._seed
    cdef uint64_t lo, hi, empty = 0
    cdef Py_ssize_t pos = start, cend, i, k
    cdef int64_t r
    cdef const dh_meta *m
    cdef meta_fields mf
    while pos < end:
        cend = min(pos + WRITE_CHUNK, end)
        for i in range(pos, cend):
            key_at(kp, wide, i, &lo, &hi)
            homes[i - pos] = hash_u128(lo, hi, seed) & mask
        for k in range(min(dist, cend - pos)):
            prefetch_slot_w(base, homes[k])
        pthread_rwlock_wrlock(&idx._map_lock)
        change_begin(idx._shared)
        for i in range(pos, cend):
            k = i - pos
            if k + dist < cend - pos:
                prefetch_slot_w(base, homes[k + dist])
            m = &recs[i]
            if m.compression > MAX_COMPRESSION:
                change_end(idx._shared)
                pthread_rwlock_unlock(&idx._map_lock)
                fail.code = FAIL_RECORD
                fail.byte = m.compression
                return i
            key_at(kp, wide, i, &lo, &hi)
            r = probe_from(base, mask, homes[k], lo, hi, &empty)
            mf.offset = m.offset
            mf.length = m.length
            mf.uncompressed_length = m.uncompressed_length
            mf.compression = m.compression
            w = &log[i - start]
            if r >= 0:
                d = slot_at(base, <uint64_t>r)
                w.slot = <uint64_t>r
                w.filled = 0
                w.offset = d.offset
                w.length = d.length
                w.uncompressed_length = d.uncompressed_length
                w.compression = d.compression
                overwrite_slot(idx._undo, d, <uint64_t>r, mask + 1, &mf)
                continue
            if r != PROBE_MISS:
                fail.code = <int>r
                fail.slot = empty
                fail.num_slots = mask + 1
                if r == PROBE_BADTAG:
                    fail.byte = slot_at(base, empty).tag
                change_end(idx._shared)
                pthread_rwlock_unlock(&idx._map_lock)
                return i
            if needs_grow(idx._num_entries, idx._num_slots):
                change_end(idx._shared)
                pthread_rwlock_unlock(&idx._map_lock)
                fail.code = FAIL_GROW
                return i
            w.slot = empty
            w.filled = 1
            fill_slot(slot_at(base, empty), lo, hi, &mf)
            DH_COMPILER_BARRIER()
            idx._num_entries += 1
            idx._generation += 1
            idx._store_count()
        change_end(idx._shared)
        pthread_rwlock_unlock(&idx._map_lock)
        pos = cend
    return end


# ---------------------------------------------------------------------------
# The Python boundary: validate and convert once, then run the C loops.

def _key_array(keys):
    """``keys`` as an aligned contiguous array: (``<u8`` array, False) or (KEY_DTYPE array, True)."""
    given = keys
    if not isinstance(keys, _np.ndarray):
        keys = _np.asarray(keys)
        if keys.size == 0:
            keys = keys.astype(_np.uint64)         # [] is float64 to numpy
    arr = keys
    dt = arr.dtype
    if dt.names is not None:
        if dt != _KEY_DTYPE:
            raise TypeError(
                f"keys of structured dtype {dt} must use diskhash.KEY_DTYPE "
                "(fields lo, hi: little-endian u8 each)")
        wide = True
    elif dt.kind == "u":
        wide = False
    elif dt.kind == "i":
        if arr.ndim == 1 and arr.size:
            neg = _np.flatnonzero(arr < 0)
            if neg.size:
                k = int(neg[0])
                raise KeyRangeError(int(arr[k]), f"keys[{k}]")
        wide = False
    elif dt.kind == "b":
        raise TypeError("keys must be unsigned integers (ids), not bool")
    elif dt.kind == "O":
        # What numpy makes of a list holding an int of 2**64 or more -- or of
        # something that is not a sequence of ids at all (None, a generator).
        items = arr.ravel().tolist() if arr.ndim else [arr.item()]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, int):
                what = type(given).__name__ if arr.ndim == 0 else f"a {type(x).__name__} among them"
                raise TypeError(
                    "keys must be an unsigned integer array (ids < 2**64), a list of ints or a "
                    f"diskhash.KEY_DTYPE array, not {what}")
        raise TypeError(
            "keys must be an unsigned integer array (ids < 2**64) or a diskhash.KEY_DTYPE array, "
            "not dtype object: ids of 2**64 and above go in a diskhash.KEY_DTYPE array "
            "(fields lo, hi: the low and high 64 bits of each id)")
    else:
        raise TypeError(
            f"keys must be an unsigned integer array (ids < 2**64) or a diskhash.KEY_DTYPE "
            f"array (full 128-bit ids), not dtype {dt}")
    if arr.ndim != 1:
        raise ValueError(f"keys must be a 1-D array, got {arr.ndim} dimensions")
    arr = _np.require(arr, _KEY_DTYPE if wide else _np.dtype("<u8"), ["C_CONTIGUOUS", "ALIGNED"])
    return arr, wide


cdef int _raise_fail(DiskHashIndex idx, fail_t *fail) except -1:
    if fail.code == FAIL_CLOSED:
        return idx._raise_unusable()
    if fail.code == PROBE_FULL or fail.code == PROBE_BADTAG:
        return idx._corrupt_seen(fail.code, fail.slot, fail.byte, fail.num_slots)
    if fail.code == FAIL_COMPRESSION:
        return idx._bad_compression(fail.lo, fail.hi, fail.byte)
    # FAIL_GROW: insert_many made room for every new key before its first
    # write, so the guard in insert_range cannot trip.
    raise AssertionError(f"unexpected batch failure code {fail.code}")


cdef object _lookup(DiskHashIndex idx, keys, bint want_records):
    cdef bint wide
    karr, wide = _key_array(keys)
    cdef Py_ssize_t n = karr.shape[0]
    out = _np.empty(n, dtype=_RESULT_DTYPE if want_records else _np.bool_)
    # Checks the index is open (and not inherited across fork) before any work.
    idx._read_acquire()
    idx._read_release()
    if n == 0:
        return out
    cdef const unsigned char[::1] kview = karr.view(_np.uint8)
    cdef unsigned char[::1] oview = out.view(_np.uint8)
    cdef const uint64_t *kp = <const uint64_t *>&kview[0]
    cdef dh_result *res = <dh_result *>&oview[0] if want_records else NULL
    cdef uint8_t *hit = NULL if want_records else <uint8_t *>&oview[0]
    cdef Py_ssize_t pos = 0, end, got, dist = _distance
    cdef fail_t fail
    cdef uint64_t seq
    cdef bint ok
    fail.code = FAIL_NONE
    while pos < n:
        # A chunk at a time: begun (waiting out another process's slot
        # change, re-mapping a table it replaced) with the GIL, probed
        # without it, and probed again if another process wrote meanwhile.
        idx._read_begin(&seq)
        with nogil:
            end = min(pos + READ_CHUNK, n)
            got = lookup_range(idx._base, idx._mask, idx._seed, kp, wide, pos, end, dist,
                               res, hit, &fail)
            ok = read_valid(idx, seq)
            idx._read_release()
        if not ok:
            fail.code = FAIL_NONE
            continue
        if got != end:
            break
        pos = end
    if fail.code != FAIL_NONE:
        _raise_fail(idx, &fail)
    return out


def get_many(DiskHashIndex index not None, keys):
    """``RESULT_DTYPE`` rows for ``keys`` (``found`` False and zeros for an absent key)."""
    return _lookup(index, keys, True)


def contains_many(DiskHashIndex index not None, keys):
    """A ``bool`` array: which of ``keys`` are present."""
    return _lookup(index, keys, False)


cdef int _grow_up_front(DiskHashIndex idx, const uint64_t *kp, bint wide, Py_ssize_t n) except -1:
    """Grow before the first write if the batch's new keys need it, so a grow
    that fails (a full disk) leaves the batch not started rather than half
    done.  Counting the new keys costs a lookup pass, paid only when the
    batch could need a grow; a key repeated in the batch counts once per
    copy, which can only over-size."""
    cdef uint64_t cap = idx._num_slots * 3 // 4
    cdef uint64_t room = cap - idx._num_entries if idx._num_entries < cap else 0
    cdef Py_ssize_t got
    cdef fail_t fail
    if <uint64_t>n <= room:
        return 0
    present = _np.zeros(n, dtype=_np.bool_)
    cdef uint8_t[::1] pview = present.view(_np.uint8)
    fail.code = FAIL_NONE
    with nogil:        # the writer lock is held: no other thread changes a slot
        got = lookup_range(idx._base, idx._mask, idx._seed, kp, wide, 0, n, _distance,
                           NULL, &pview[0], &fail)
    if got != n:
        _raise_fail(idx, &fail)
    new = n - int(_np.count_nonzero(present))
    if new > room:
        idx._ensure_room_locked(<uint64_t>new)
    return 0


def prepare_inserts(DiskHashIndex index not None, Py_ssize_t count):
    """Ready the table for ``count`` inserts that come in several
    ``insert_many`` calls (a ``put_many`` indexes its frames piece by piece):
    when they will write nearly every page of the table (``count`` against
    its slots as ``insert_many`` judges one batch), fault the whole map in
    for writing now, in one call.  Otherwise each first write into a page
    takes a fault of its own -- every page of a new table, and every page
    after a grow or a ``save()``, whose msync leaves the pages clean and
    write-protected again.  Changes no entry; best effort (an older kernel
    refuses the advice and the faults happen one by one)."""
    if count <= 0:
        return
    index._write_acquire(True)
    try:
        if <uint64_t>count * POPULATE_RATIO >= index._num_slots:
            with nogil:
                populate_for_write(index._base, HEADER_SIZE + index._num_slots * SLOT_SIZE)
    finally:
        index._write_release()


def insert_many(DiskHashIndex index not None, keys, records):
    """Insert ``records[i]`` under ``keys[i]`` for every i, in order (a later duplicate wins).

    All or nothing: the arguments are validated and any grow is done before
    the first write, and a batch that meets a damaged slot mid-way is undone
    before ``CorruptIndexError`` is raised, so a call that raises changes no
    entry.  (A grow done up front stays: it changes the table's size, not
    its entries.)
    """
    cdef DiskHashIndex idx = index
    cdef bint wide
    karr, wide = _key_array(keys)
    rarr = _np.asarray(records)
    if rarr.dtype != _META_DTYPE:
        raise TypeError(f"records must be a diskhash.META_DTYPE array, not dtype {rarr.dtype}")
    if rarr.ndim != 1:
        raise ValueError(f"records must be a 1-D array, got {rarr.ndim} dimensions")
    cdef Py_ssize_t n = karr.shape[0]
    if rarr.shape[0] != n:
        raise ValueError(f"insert_many got {n} keys but {rarr.shape[0]} records")
    bad = _np.flatnonzero(rarr["compression"] > MAX_COMPRESSION)
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"records[{k}].compression = {rarr['compression'][k]} is not a known compression "
            f"(0 NONE, 1 LZ4, 2 ZSTD)")
    rarr = _np.require(rarr, _META_DTYPE, ["C_CONTIGUOUS", "ALIGNED"])
    cdef const unsigned char[::1] kview
    cdef const unsigned char[::1] rview
    cdef Py_ssize_t pos, dist = _distance
    cdef fail_t fail
    cdef batch_write *log = NULL
    if n == 0:
        idx._write_acquire(True)        # the open/writable checks, as for a batch
        idx._write_release()
        return
    log = <batch_write *>PyMem_RawMalloc(<size_t>n * sizeof(batch_write))
    if log == NULL:
        raise MemoryError(f"insert_many: no memory for the undo log of {n} keys")
    idx._write_acquire(True)
    try:
        kview = karr.view(_np.uint8)
        rview = rarr.view(_np.uint8)
        _grow_up_front(idx, <const uint64_t *>&kview[0], wide, n)
        fail.code = FAIL_NONE
        with nogil:
            if <uint64_t>n * POPULATE_RATIO >= idx._num_slots:
                # A batch this large writes nearly every page of the table.
                # (Not pwrite'd zeros first: faster, but the page cache then
                # held the table in large folios, and a save() of 100 puts
                # after rebuild_index dirtied 17 MB instead of 3.6 MB; read-
                # ahead first measured no faster: tests/store/test_rebuild.py.)
                populate_for_write(idx._base, HEADER_SIZE + idx._num_slots * SLOT_SIZE)
            pos = insert_range(idx, <const uint64_t *>&kview[0], wide,
                               <const dh_meta *>&rview[0], 0, n, dist, &fail, log)
            if fail.code != FAIL_NONE:
                rollback(idx, log, pos)
        if fail.code == FAIL_RECORD:
            raise ValueError(
                f"records[{pos}].compression = {fail.byte} is not a known compression: "
                f"the array changed during insert_many (nothing was inserted)")
        if fail.code != FAIL_NONE:
            _raise_fail(idx, &fail)
    finally:
        idx._write_release()
        PyMem_RawFree(log)
