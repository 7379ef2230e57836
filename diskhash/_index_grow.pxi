# Included by _index.pyx (one module, so the hot path stays inlined): growing --
# rehashing into a new table file, publishing it, swapping the map.
import operator
import os

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy
from posix.mman cimport MS_SYNC, msync
from diskhash._format cimport (
    DH_MAX_SLOTS,
    HEADER_SIZE,
    MAX_COMPRESSION,
    MIN_SLOTS,
    OFF_NUM_ENTRIES,
    PROBE_MISS,
    SLOT_SIZE,
    TAG_EMPTY,
    TAG_OCCUPIED,
    dh_slot,
    needs_grow,
    probe,
    slot_at,
)

from diskhash import _files
from diskhash.errors import CorruptIndexError

# ---------------------------------------------------------------------------
# Rehash into a fresh table (grow, repair).  Returns entries placed, or a
# negative code: -1 new table full, -2 bad slot met (not salvaging).

cdef int64_t rehash(const unsigned char *old, uint64_t old_slots,
                    unsigned char *new, uint64_t new_slots, uint64_t seed,
                    bint salvage) noexcept nogil:
    cdef uint64_t i, empty = 0, placed = 0
    cdef uint64_t mask = new_slots - 1
    cdef int64_t r
    cdef const dh_slot *s
    cdef dh_slot *d
    for i in range(old_slots):
        s = slot_at(old, i)
        if s.tag == TAG_EMPTY:
            continue
        if s.tag != TAG_OCCUPIED or s.compression > MAX_COMPRESSION:
            if salvage:
                continue
            return -2
        r = probe(new, mask, seed, s.key_lo, s.key_hi, &empty)
        if r >= 0:
            continue            # a duplicate copy: the first one wins
        if r != PROBE_MISS:
            return -1
        d = slot_at(new, empty)
        memcpy(d, s, SLOT_SIZE)
        d.reserved0 = 0
        d.reserved1 = 0
        placed += 1
    return <int64_t>placed


# The most entries a table may be asked to hold (capacity=, reserve()): those
# of the largest table, DH_MAX_SLOTS slots (its file would be 2.9 EB).
MAX_SLOTS = DH_MAX_SLOTS
MAX_CAPACITY = MAX_SLOTS // 4 * 3


cdef uint64_t slots_for(uint64_t entries):
    """Smallest power-of-two slot count (>= 4096) holding `entries` without a
    grow.  `entries` <= MAX_CAPACITY (checked by the callers), so the doubling
    stops at DH_MAX_SLOTS and nothing overflows."""
    cdef uint64_t slots = MIN_SLOTS
    while entries and needs_grow(entries - 1, slots) and slots < DH_MAX_SLOTS:
        slots *= 2
    return slots


def _entry_count(value, str name):
    """``capacity=``/``reserve()`` argument: an int in [0, MAX_CAPACITY]."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    value = operator.index(value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value > MAX_CAPACITY:
        raise ValueError(
            f"{name} {value} is more than the largest table holds "
            f"({MAX_CAPACITY} entries in 2**{MAX_SLOTS.bit_length() - 1} slots)")
    return value


cdef int rebuild_table(DiskHashIndex self, uint64_t new_slots, bint salvage, uint64_t new_seed) except -1:
    """Write a new table of ``new_slots`` beside the file, publish it, swap.

    ``new_seed`` (nonzero) rehashes under a new seed (repair of a zero seed).

    Holds the writer lock throughout; readers keep reading the old map
    until the swap, which takes the map lock exclusively for a few pointer
    stores.  On any error before the rename, the old file and map are
    untouched and the temporary file is removed.
    """
    cdef const unsigned char[::1] new_view
    cdef unsigned char *nbase
    cdef int64_t placed
    cdef uint64_t old_slots = self._num_slots, seed = new_seed or self._seed
    cdef const unsigned char *obase = self._base
    cdef bint dense
    action = "rebuilding the table" if salvage else "growing the table"
    if new_slots > DH_MAX_SLOTS:
        raise OverflowError(f"{self.path}: a table of {new_slots} slots is more than 2**56")
    tmp = _files.temp_path(self._file, "repair" if salvage else "grow")
    mode = os.fstat(self._fd).st_mode & 0o7777
    try:
        fd = _files.create_table_file(tmp, new_slots, seed, mode)
    except OSError as exc:
        raise _files.table_error(exc, action, self.path, new_slots) from exc
    mm = None
    try:
        mm = _files.map_table(fd, new_slots, writable=True)
        new_view = mm
        nbase = <unsigned char *>&new_view[0]
        dense = self._num_entries * 8 >= new_slots     # the rehash writes nearly every page
        with nogil:
            if dense:
                populate_for_write(nbase, HEADER_SIZE + new_slots * SLOT_SIZE)
            placed = rehash(obase, old_slots, nbase, new_slots, seed, salvage)
        if placed == -1:
            raise CorruptIndexError(self.path, f"entries do not fit in {new_slots} slots while rebuilding")
        if placed == -2:
            raise CorruptIndexError(
                self.path, "bad slot met while growing the table; run repair() first")
        (<uint64_t *>(nbase + OFF_NUM_ENTRIES))[0] = <uint64_t>placed
        with nogil:
            msync(nbase, HEADER_SIZE + new_slots * SLOT_SIZE, MS_SYNC)
        _files.replace_durably(fd, tmp, self._file)
    except BaseException as exc:
        new_view = None
        if mm is not None:
            mm.close()
        os.close(fd)
        _files.discard_temp(tmp)
        if isinstance(exc, OSError):
            raise _files.table_error(exc, action, self.path, new_slots) from exc
        raise
    # The new file is the index now: swap it in, then retire the old map.
    old_mm, old_fd = self._mmap, self._fd
    self._exclusive_acquire()
    self._view = new_view
    self._base = nbase
    self._mmap = mm
    self._fd = fd
    self._num_slots = new_slots
    self._mask = new_slots - 1
    self._seed = seed
    self._num_entries = <uint64_t>placed
    self._generation += 1
    self._exclusive_release()
    new_view = None
    old_mm.close()
    os.close(old_fd)
    _files.fsync_dir(os.path.dirname(self._file))
    return 0
