# Included by table.pyx (one module, so the hot path stays inlined): growing --
# rehashing into a new table file, publishing it, swapping the map.
import operator
import os

from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy
from posix.mman cimport MS_SYNC, msync
from diskhash._format.sochidx2 cimport (
    DH_MAX_SLOTS,
    HEADER_SIZE,
    MAX_COMPRESSION,
    MIN_SLOTS,
    OFF_NUM_ENTRIES,
    PROBE_MISS,
    SLOT_SIZE,
    TAG_EMPTY,
    dh_seq_begin,
    dh_seq_end,
    dh_store_release,
    TAG_OCCUPIED,
    dh_slot,
    needs_grow,
    probe,
    slot_at,
)

from diskhash._fs import files as _files
from diskhash.errors import CorruptIndexError

# ---------------------------------------------------------------------------
# Rehash into a fresh table (grow, repair).  Returns entries placed, or a
# negative code: -1 new table full, -2 bad slot met (not salvaging).

cdef int64_t rehash_range(const unsigned char *old, uint64_t start, uint64_t end,
                          unsigned char *new, uint64_t new_slots, uint64_t seed,
                          bint salvage) noexcept nogil:
    """Rehash old slots [start, end); entries placed or a negative code."""
    cdef uint64_t i, empty = 0, placed = 0
    cdef uint64_t mask = new_slots - 1
    cdef int64_t r
    cdef const dh_slot *s
    cdef dh_slot *d
    for i in range(start, end):
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


# ---------------------------------------------------------------------------
# Keeping a grow off the event loop's CPU (docs/performance.md).
#
# BENCHMARK KNOB, not public API: the module attribute ``_GROW_KNOBS``
# (default: the DISKHASH_GROW_KNOBS environment variable, else
# DEFAULT_GROW_KNOBS) is read at the start of every grow; a '+'-joined set of
#   nice       the grow's thread runs at nice 19 inside its nogil sections
#              only (populate + rehash, msync), back to its own value before
#              it takes the GIL again (a low thread holding the GIL would
#              block the loop: priority inversion); niceN (N in 1..19): at
#              nice N instead of 19;
#   yield      rehash in slices of GROW_SLICE_SLOTS old slots, sched_yield()
#              between slices;
#   pause      the same slices, a GROW_PAUSE_US sleep between them;
#   writeback  after each slice, sync_file_range(SYNC_FILE_RANGE_WRITE) on
#              the parts of the new file no later slice writes, so the final
#              msync has little left;
# or "none".  benchmarks/loop_stall.py --variants sets it per run.

cdef extern from *:
    """
    #ifdef __linux__
    #include <errno.h>
    #include <fcntl.h>
    #include <sched.h>
    #include <sys/resource.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    /* Lower the calling thread (not the process: Linux nice is per thread)
       to nice 19 if it can be put back afterwards: as root, or within
       RLIMIT_NICE.  *old gets the value to restore; returns 1 if lowered. */
    static int dh_nice_lower(int level, int *old) {
        static int refused = 0;
        pid_t tid = (pid_t)syscall(SYS_gettid);
        struct rlimit rl;
        int cur;
        if (refused) return 0;
        errno = 0;
        cur = getpriority(PRIO_PROCESS, (id_t)tid);
        if (cur == -1 && errno) return 0;
        if (cur >= level) return 0;
        if (geteuid() != 0) {
            if (getrlimit(RLIMIT_NICE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY
                    || 20 - (long)rl.rlim_cur > cur) {
                refused = 1;              /* could not raise it back: never lower */
                return 0;
            }
        }
        if (setpriority(PRIO_PROCESS, (id_t)tid, level) != 0) return 0;
        if (setpriority(PRIO_PROCESS, (id_t)tid, cur) != 0) { refused = 1; return 0; }
        if (setpriority(PRIO_PROCESS, (id_t)tid, level) != 0) return 0;
        *old = cur;
        return 1;
    }
    static void dh_nice_restore(int old) {
        setpriority(PRIO_PROCESS, (id_t)(pid_t)syscall(SYS_gettid), old);
    }
    static void dh_start_writeback(int fd, long long offset, long long nbytes) {
        if (nbytes > 0) sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE);
    }
    static void dh_pause(unsigned int us) {
        if (us) usleep(us); else sched_yield();
    }
    #else
    static int dh_nice_lower(int level, int *old) { (void)level; (void)old; return 0; }
    static void dh_nice_restore(int old) { (void)old; }
    static void dh_start_writeback(int fd, long long offset, long long nbytes) {
        (void)fd; (void)offset; (void)nbytes;
    }
    #include <sched.h>
    #include <unistd.h>
    static void dh_pause(unsigned int us) { if (us) usleep(us); else sched_yield(); }
    #endif
    """
    int dh_nice_lower(int level, int *old) noexcept nogil
    void dh_nice_restore(int old) noexcept nogil
    void dh_start_writeback(int fd, long long offset, long long nbytes) noexcept nogil
    void dh_pause(unsigned int us) noexcept nogil

GROW_KNOB_NAMES = ("nice", "yield", "pause", "writeback")
DEFAULT_GROW_KNOBS = "none"
_GROW_KNOBS = os.environ.get("DISKHASH_GROW_KNOBS", DEFAULT_GROW_KNOBS)
GROW_SLICE_SLOTS = 1 << 16      # old slots per slice: 2.5 MiB read (docs/performance.md)
GROW_PAUSE_US = 200

cdef enum:
    KNOB_NICE = 1
    KNOB_YIELD = 2
    KNOB_PAUSE = 4
    KNOB_WRITEBACK = 8
    WRITEBACK_LAG_SLOTS = 4096  # probe runs reach this far past a slice's end at most (in practice)


cdef int grow_knobs(int *nice_level) except -1:
    """``_GROW_KNOBS`` as bit flags (and the nice level); a ValueError
    naming a bad word."""
    cdef int flags = 0
    text = _GROW_KNOBS or "none"
    nice_level[0] = 19
    for word in text.split("+"):
        if word == "none":
            continue
        if word.startswith("nice") and word[4:].isdigit() and 1 <= int(word[4:]) <= 19:
            nice_level[0] = int(word[4:])
            word = "nice"
        if word not in GROW_KNOB_NAMES:
            raise ValueError(f"diskhash._index.table._GROW_KNOBS: unknown knob {word!r} in {text!r} "
                             f"(a '+'-joined set of {', '.join(GROW_KNOB_NAMES)}, or 'none')")
        flags |= 1 << GROW_KNOB_NAMES.index(word)
    return flags


cdef int64_t rehash(const unsigned char *old, uint64_t old_slots,
                    unsigned char *new, uint64_t new_slots, uint64_t seed,
                    bint salvage, int knobs, int fd, bint in_order,
                    uint64_t slice_slots, unsigned int pause_us) noexcept nogil:
    """All old slots into ``new``: in one go, or in slices with a pause and
    an incremental writeback between them (``knobs``).  ``in_order``: the
    new table is twice the old under the same seed, so old slot i lands near
    new slot i or i + old_slots and everything before a slice's start (less
    a lag) is final: only then is the writeback worth starting."""
    cdef uint64_t start = 0, end, done_to = 0, upto
    cdef int64_t r, placed = 0
    cdef bint sliced = (knobs & (KNOB_YIELD | KNOB_PAUSE | KNOB_WRITEBACK)) != 0
    if not sliced:
        return rehash_range(old, 0, old_slots, new, new_slots, seed, salvage)
    if knobs & KNOB_PAUSE == 0:
        pause_us = 0
    while start < old_slots:
        end = start + slice_slots if old_slots - start > slice_slots else old_slots
        r = rehash_range(old, start, end, new, new_slots, seed, salvage)
        if r < 0:
            return r
        placed += r
        start = end
        if knobs & KNOB_WRITEBACK and in_order and end > WRITEBACK_LAG_SLOTS and end < old_slots:
            upto = end - WRITEBACK_LAG_SLOTS
            if upto > done_to:
                dh_start_writeback(fd, HEADER_SIZE + done_to * SLOT_SIZE, (upto - done_to) * SLOT_SIZE)
                dh_start_writeback(fd, HEADER_SIZE + (old_slots + done_to) * SLOT_SIZE,
                                   (upto - done_to) * SLOT_SIZE)
                done_to = upto
        if knobs & (KNOB_YIELD | KNOB_PAUSE) and end < old_slots:
            dh_pause(pause_us)
    return placed


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
    cdef bint dense, lowered
    cdef int nice_level = 19, old_nice = 0, c_fd
    cdef int knobs = grow_knobs(&nice_level)
    cdef bint in_order = new_slots == 2 * old_slots and seed == self._seed
    cdef uint64_t slice_slots = max(1, GROW_SLICE_SLOTS)     # 0 would never advance
    cdef unsigned int pause_us = GROW_PAUSE_US
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
        c_fd = fd
        with nogil:
            # Low priority only while the GIL is released (see above).
            lowered = knobs & KNOB_NICE and dh_nice_lower(nice_level, &old_nice)
            if dense:
                populate_for_write(nbase, HEADER_SIZE + new_slots * SLOT_SIZE)
            placed = rehash(obase, old_slots, nbase, new_slots, seed, salvage,
                            knobs, c_fd, in_order, slice_slots, pause_us)
            if lowered:
                dh_nice_restore(old_nice)
        if placed == -1:
            raise CorruptIndexError(self.path, f"entries do not fit in {new_slots} slots while rebuilding")
        if placed == -2:
            raise CorruptIndexError(
                self.path, "bad slot met while growing the table; run repair() first")
        (<uint64_t *>(nbase + OFF_NUM_ENTRIES))[0] = <uint64_t>placed
        with nogil:
            lowered = knobs & KNOB_NICE and dh_nice_lower(nice_level, &old_nice)
            msync(nbase, HEADER_SIZE + new_slots * SLOT_SIZE, MS_SYNC)
            if lowered:
                dh_nice_restore(old_nice)
        if self._shared != NULL:
            # Other processes open the published file while this one has it:
            # its inode lock must be shared (it was made exclusive).
            _files.lock_table(fd, exclusive=False)
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
    # (Its pages were just written: locking them reads nothing.)
    resident = make_resident(self._resident_budget, nbase, HEADER_SIZE + new_slots * SLOT_SIZE)
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
    self.resident = resident
    if self._shared != NULL:
        # Other processes re-map when they see the generation move (their
        # reads of the old file until then are of the same entries).
        dh_seq_begin(&self._shared.seq)
        dh_store_release(&self._shared.table_gen, self._shared.table_gen + 1)
        self._table_gen = self._shared.table_gen
        dh_seq_end(&self._shared.seq)
    self._exclusive_release()
    new_view = None
    retire_map(self, old_mm, old_fd)    # (freeing the old file: not under the writer lock)
    _files.fsync_dir(os.path.dirname(self._file))
    return 0
