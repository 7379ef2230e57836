# Included by table.pyx (one module, so the hot path stays inlined): the
# whole-table scan, and len() when the header's count cannot be trusted.
from libc.stdint cimport uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset
from cpython.exc cimport PyErr_CheckSignals
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from diskhash._format.sochidx2 cimport (
    DH_SHARED_NEEDS_HEAL,
    OFF_NUM_ENTRIES,
    MAX_COMPRESSION,
    TAG_EMPTY,
    TAG_OCCUPIED,
    dh_slot,
    hash_u128,
    mix,
    slot_at,
)

# ---------------------------------------------------------------------------
# Whole-table scan: shared by verify, stats, the recount after an unclean
# close and repair's report.  Linear in the slots: each run (the occupied
# slots between two empty ones) is checked in one pass, its keys kept in a
# small scratch set to find duplicates.  It runs with the GIL released in
# slices of about SCAN_SLICE_NS (whole steps of SCAN_STEP slots), checking for
# signals between slices, so Ctrl-C interrupts a scan of any size.  A slice
# lasts many steps, because a thread waiting for the GIL needs time to wake
# and take it: a scan that dropped and retook the GIL every step usually won
# the race again, and the other threads' sleeps overran (docs/performance.md,
# "Measurements behind the design").

cdef enum:
    D_BAD_TAG = 0
    D_BAD_COMPRESSION = 1
    D_RESERVED = 2
    D_UNREACHABLE = 3
    D_DUPLICATE = 4
    D_KINDS = 5

cdef enum:
    SCAN_FIND_EMPTY = 0     # walking back from the end to the last empty slot
    SCAN_SEED_RUN = 1       # the run that wraps past the end into slot 0: its tail
    SCAN_MAIN = 2           # slot order, 0 .. num_slots-1
    SCAN_DONE = 3
    SCAN_STEP = 16384       # slots between two looks at the clock
    SCAN_SLICE_NS = 2000000  # time with the GIL released between two checks for signals
    SEEN_MIN = 1024         # first size of the duplicate-finding set

ctypedef struct defect_t:
    uint64_t slot
    int kind

# One entry of the current run's key set: the slot holding the key, its
# hash, and which run it belongs to (entries of older runs count as empty,
# so moving to the next run costs nothing).
ctypedef struct seen_t:
    uint64_t run
    uint64_t slot
    uint64_t hash

ctypedef struct scan_t:
    uint64_t occupied
    uint64_t empties
    uint64_t longest        # slots examined by the longest successful lookup
    uint64_t total_probe
    uint64_t counts[D_KINDS]
    defect_t *defects       # first `cap` defects, in slot order
    size_t cap
    size_t ndefects
    # progress, so the scan can stop for signals and resume
    int phase
    uint64_t pos
    uint64_t last_empty
    bint have_empty
    # the keys of the current run (duplicate detection)
    seen_t *seen
    uint64_t seen_mask
    uint64_t seen_count
    uint64_t run
    bint out_of_memory


cdef bint seen_resize(scan_t *sc, uint64_t size) noexcept nogil:
    """Make room for a longer run: a table of `size` entries holding the
    current run's entries.  False if out of memory."""
    cdef seen_t *new = <seen_t *>calloc(size, sizeof(seen_t))
    cdef uint64_t k, j, mask = size - 1
    if new == NULL:
        return False
    if sc.seen != NULL:
        for k in range(sc.seen_mask + 1):
            if sc.seen[k].run == sc.run:
                j = mix(sc.seen[k].hash) & mask
                while new[j].run == sc.run:
                    j = (j + 1) & mask
                new[j] = sc.seen[k]
        free(sc.seen)
    sc.seen = new
    sc.seen_mask = mask
    return True


cdef bint seen_add(scan_t *sc, const unsigned char *base, uint64_t slot,
                   uint64_t h) noexcept nogil:
    """Add `slot`'s key to the current run's set; True if an earlier slot of
    the run already holds that key (then nothing is added)."""
    cdef const dh_slot *s = slot_at(base, slot)
    cdef const dh_slot *t
    cdef uint64_t j
    if (sc.seen_count + 1) * 2 > sc.seen_mask + 1:
        if not seen_resize(sc, (sc.seen_mask + 1) * 2 if sc.seen != NULL else SEEN_MIN):
            sc.out_of_memory = True
            return False
    j = mix(h) & sc.seen_mask
    while sc.seen[j].run == sc.run:
        if sc.seen[j].hash == h:
            t = slot_at(base, sc.seen[j].slot)
            if t.key_lo == s.key_lo and t.key_hi == s.key_hi:
                return True
        j = (j + 1) & sc.seen_mask
    sc.seen[j].run = sc.run
    sc.seen[j].slot = slot
    sc.seen[j].hash = h
    sc.seen_count += 1
    return False


cdef inline void new_run(scan_t *sc) noexcept nogil:
    sc.run += 1
    sc.seen_count = 0


cdef void scan_step(const unsigned char *base, uint64_t nslots, uint64_t seed,
                    scan_t *out) noexcept nogil:
    """Advance the scan by up to SCAN_STEP slots (see scan_table)."""
    cdef uint64_t mask = nslots - 1
    cdef uint64_t i, h, dist, budget = SCAN_STEP
    cdef bint reachable
    cdef const dh_slot *s
    cdef int kind
    if out.phase == SCAN_FIND_EMPTY:
        # The last empty slot before slot 0, cyclically, seeds the run tracking.
        while out.pos > 0 and budget > 0:
            out.pos -= 1
            budget -= 1
            if slot_at(base, out.pos).tag == TAG_EMPTY:
                out.last_empty = out.pos
                out.have_empty = True
                break
        if out.have_empty or out.pos == 0:
            out.phase = SCAN_SEED_RUN
            out.run = 1
            out.pos = out.last_empty + 1 if out.have_empty else nslots
        return
    if out.phase == SCAN_SEED_RUN:
        # Slot 0 continues the run that ends the table: put that run's keys in
        # the set first, so a copy in slot 0.. finds one before the wrap.
        while out.pos < nslots and budget > 0:
            s = slot_at(base, out.pos)
            if s.tag == TAG_OCCUPIED:
                h = hash_u128(s.key_lo, s.key_hi, seed)
                if ((out.pos - h) & mask) < ((out.pos - out.last_empty) & mask):
                    seen_add(out, base, out.pos, h)
            out.pos += 1
            budget -= 1
        if out.pos >= nslots:
            out.phase = SCAN_MAIN
            out.pos = 0
        return
    while out.pos < nslots and budget > 0 and not out.out_of_memory:
        i = out.pos
        out.pos += 1
        budget -= 1
        s = slot_at(base, i)
        if s.tag == TAG_EMPTY:
            out.empties += 1
            out.last_empty = i
            new_run(out)
            continue
        kind = -1
        if s.tag != TAG_OCCUPIED:
            kind = D_BAD_TAG
        else:
            out.occupied += 1
            h = hash_u128(s.key_lo, s.key_hi, seed)
            dist = (i - h) & mask
            if dist + 1 > out.longest:
                out.longest = dist + 1
            out.total_probe += dist + 1
            # A lookup from the home slot reaches i only if no empty slot
            # lies between them.  (With no empty slot at all, every slot is
            # reached; which copy of a duplicate is named may then differ.)
            reachable = not out.have_empty or dist < ((i - out.last_empty) & mask)
            if s.compression > MAX_COMPRESSION:
                kind = D_BAD_COMPRESSION
            elif s.reserved0 != 0 or s.reserved1 != 0:
                kind = D_RESERVED
            elif not reachable:
                kind = D_UNREACHABLE
            if reachable and seen_add(out, base, i, h) and kind < 0:
                kind = D_DUPLICATE
        if kind >= 0:
            out.counts[kind] += 1
            if out.ndefects < out.cap:
                out.defects[out.ndefects].slot = i
                out.defects[out.ndefects].kind = kind
                out.ndefects += 1
    if out.pos >= nslots:
        out.phase = SCAN_DONE


cdef int scan_table(const unsigned char *base, uint64_t nslots, uint64_t seed,
                    scan_t *out) except -1:
    """Scan the whole table into `out` (zeroed by the caller but for the
    defect buffer).  Called with the GIL; releases it for each slice and
    raises ``KeyboardInterrupt`` (or what a signal handler raises) between
    steps.  The caller keeps the map alive (read lock, or the only user)."""
    cdef timespec t0, t
    out.phase = SCAN_FIND_EMPTY
    out.pos = nslots
    try:
        while out.phase != SCAN_DONE:
            with nogil:
                clock_gettime(CLOCK_MONOTONIC, &t0)
                while True:
                    scan_step(base, nslots, seed, out)
                    if out.phase == SCAN_DONE or out.out_of_memory:
                        break
                    clock_gettime(CLOCK_MONOTONIC, &t)
                    if ((t.tv_sec - t0.tv_sec) * 1000000000 + (t.tv_nsec - t0.tv_nsec)
                            >= SCAN_SLICE_NS):
                        break
            if out.out_of_memory:
                raise MemoryError("no memory for the duplicate check of a table scan")
            if PyErr_CheckSignals() < 0:
                return -1
    finally:
        free(out.seen)
        out.seen = NULL
    return 0


cdef uint64_t count_entries(DiskHashIndex self) except? 0:
    """``len(index)``: the header's count, or a count of the slots when it
    may be stale (a killed writer's, a read-only open after an unclean close)."""
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
