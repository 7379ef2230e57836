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
"""
import math
import numbers
import operator
import os
import warnings
import weakref

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.errno cimport errno
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.mman cimport MS_SYNC, msync
from cpython.exc cimport PyErr_CheckSignals

from diskhash._convert cimport (
    key_to_u128,
    make_record,
    meta_fields,
    meta_from_object,
    u128_to_int,
)
from diskhash._format cimport (
    DH_COMPILER_BARRIER,
    DH_MAX_SLOTS,
    DH_UNDO_ARMED,
    HEADER_SIZE,
    MAX_COMPRESSION,
    MIN_SLOTS,
    OFF_NUM_ENTRIES,
    PROBE_BADTAG,
    PROBE_FULL,
    PROBE_MISS,
    SLOT_SIZE,
    TAG_EMPTY,
    TAG_OCCUPIED,
    dh_slot,
    dh_undo,
    hash_u128,
    mix,
    needs_grow,
    probe,
    slot_at,
)
from diskhash._locks cimport *

from diskhash import _files
from diskhash._format import header_reserved, unpack_header
# (Importing _records also tells _convert which class records are built of.)
from diskhash._records import IndexStats, RepairReport
from diskhash.errors import (
    CorruptIndexError,
    DiskHashError,
    IndexClosedError,
    ReadOnlyIndexError,
)

cdef enum:
    STATE_OPEN = 0
    STATE_CLOSED = 1
    STATE_FORKED = 2

cdef object _MISSING = object()
cdef Py_ssize_t CHUNK = 1024          # slots copied per iteration step

cdef object _batch = None


cdef object _batch_module():
    """The numpy batch layer, imported on first use (numpy is optional)."""
    global _batch
    if _batch is None:
        from diskhash import _batch as module
        _batch = module
    return _batch


# Indexes alive in this process, so a forked child can disable its copies.
_open_indexes = weakref.WeakSet()


def _disable_inherited_indexes():
    for idx in list(_open_indexes):
        (<DiskHashIndex>idx)._forked()


os.register_at_fork(after_in_child=_disable_inherited_indexes)


# ---------------------------------------------------------------------------
# Whole-table scan: shared by verify, stats, the recount after an unclean
# close and repair's report.  Linear in the slots: each run (the occupied
# slots between two empty ones) is checked in one pass, its keys kept in a
# small scratch set to find duplicates.  It runs in steps of SCAN_STEP slots
# with the GIL released, checking for signals between steps, so Ctrl-C
# interrupts a scan of any size.

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
    SCAN_STEP = 16384       # slots between two checks for signals
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
    defect buffer).  Called with the GIL; releases it for each step and
    raises ``KeyboardInterrupt`` (or what a signal handler raises) between
    steps.  The caller keeps the map alive (read lock, or the only user)."""
    out.phase = SCAN_FIND_EMPTY
    out.pos = nslots
    try:
        while out.phase != SCAN_DONE:
            with nogil:
                scan_step(base, nslots, seed, out)
            if out.out_of_memory:
                raise MemoryError("no memory for the duplicate check of a table scan")
            if PyErr_CheckSignals() < 0:
                return -1
    finally:
        free(out.seen)
        out.seen = NULL
    return 0


cdef str _defect_text(int kind, uint64_t slot, const unsigned char *base):
    cdef const dh_slot *s = slot_at(base, slot)
    if kind == D_BAD_TAG:
        return f"slot {slot}: bad tag 0x{s.tag:02x} (expected 0 or 1)"
    if kind == D_BAD_COMPRESSION:
        return f"slot {slot}: unknown compression byte {s.compression}"
    if kind == D_RESERVED:
        return f"slot {slot}: nonzero reserved bytes"
    if kind == D_UNREACHABLE:
        return f"slot {slot}: key {u128_to_int(s.key_lo, s.key_hi)} is unreachable from its home slot"
    return f"slot {slot}: duplicate of key {u128_to_int(s.key_lo, s.key_hi)}"


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


def _lock_timeout(value):
    """``timeout=``: seconds >= 0 (inf: wait forever, as None does)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {value!r}")
    return seconds


@cython.final
cdef class _Chunk:
    """One step of iteration: records copied under the read lock."""
    cdef public list items
    cdef public uint64_t next_slot
    cdef public uint64_t generation


cdef class DiskHashIndex:
    """A persistent map from 128-bit edge ids to ``PayloadMeta`` records.

    ``DiskHashIndex(path, readonly=False, capacity=None, timeout=0.0)`` opens
    the SOCHIDX2 file at ``path``, creating it (and its parent directories)
    unless ``readonly``.  Writers hold an exclusive lock on ``<file>.lock``
    beside the resolved file (symlinks followed) and readers a shared one: a
    conflicting open waits up to ``timeout`` seconds (``None``: forever) and
    then raises ``IndexLockedError``.  ``capacity`` (an int) sizes the table
    for that many entries up front.  See docs/files-and-locks.md for
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

    def __init__(self, path, *, bint readonly=False, capacity=None, timeout=0.0):
        if self._state != STATE_CLOSED or self._lock is not None:
            raise DiskHashError("DiskHashIndex.__init__ called twice")
        name = os.fsdecode(path)
        if not name:
            raise ValueError("path is empty: name the index file")
        if capacity is not None:
            capacity = _entry_count(capacity, "capacity")
            if readonly:
                raise ValueError("capacity= needs a writable index (readonly=True given)")
        timeout = _lock_timeout(timeout)
        self.path = os.path.abspath(name)
        # Every file operation goes to the resolved path, so that a symlink
        # and its target share one lock file, and a grow replaces the target,
        # never the link (docs/files-and-locks.md).
        self._file = os.path.realpath(self.path)
        self.readonly = readonly
        # Nothing is created (no lock file, no directory) until we know the
        # path is free or holds an index.
        if not _files.check_existing(self._file, self.path):
            if readonly:
                raise FileNotFoundError(2, "no index file to open read-only", self.path)
            os.makedirs(os.path.dirname(self._file), exist_ok=True)
        self._lock = _files.IndexLock(self._file, exclusive=not readonly, timeout=timeout,
                                      name=self.path)
        try:
            self._open_file(capacity)
        except BaseException:
            self._release_resources(unlock=True)
            raise
        _open_indexes.add(self)

    # -- opening -------------------------------------------------------------

    cdef _open_file_impl(self):
        """Open, lock the file's inode, validate the header in O(1), make
        sure a writable table's blocks exist, and map the table."""
        self._fd, st = _files.open_table(self._file, self.path, writable=not self.readonly)
        self._lock.lock_table(self._fd)
        num_slots, num_entries, seed = _files.read_header(self._fd, st, self.path)
        if num_slots > DH_MAX_SLOTS:
            raise CorruptIndexError(self.path, f"slot count {num_slots} is more than 2**56")
        if not self.readonly:
            try:
                _files.ensure_allocated(self._fd, _files.table_bytes(num_slots))
            except OSError as exc:
                raise _files.table_error(
                    exc, "allocating the blocks of the table", self.path, num_slots) from exc
        mm = _files.map_table(self._fd, num_slots, writable=not self.readonly)
        self._mmap = mm
        self._view = mm
        self._base = <unsigned char *>&self._view[0]
        self._num_slots = num_slots
        self._mask = num_slots - 1
        self._seed = seed
        self._num_entries = num_entries
        self._state = STATE_OPEN
        return st

    def _open_file(self, capacity):
        created = False
        if not self.readonly:
            _files.remove_leftovers(self._file)
            if not os.path.exists(self._file):
                self._create(slots_for(capacity or 0))
                created = True
        st = self._open_file_impl()
        marker = self._lock.read_marker()
        clean = (marker is not None and marker.matches(st)
                 and marker.entries == self._num_entries)
        # A file we just created is empty and consistent: no scan needed.
        self._count_ok = (clean or created) and self._num_entries <= self._num_slots
        if not self.readonly:
            self._undo_view = self._lock.map_undo()
            self._undo = <dh_undo *>&self._undo_view[0]
            self._roll_back_torn_overwrite()
            if not self._count_ok:
                self._heal_after_unclean_close()
            self._lock.mark_dirty()
            if capacity:
                self.reserve(capacity)

    def _create(self, uint64_t num_slots):
        tmp = _files.temp_path(self._file, "create")
        try:
            fd = _files.create_table_file(tmp, num_slots, _files.new_seed())
        except OSError as exc:
            raise _files.table_error(exc, "creating the index file", self.path, num_slots) from exc
        try:
            _files.publish(fd, tmp, self._file)
        except BaseException:
            _files.discard_temp(tmp)
            raise
        finally:
            os.close(fd)

    def _roll_back_torn_overwrite(self):
        """The last writer died in the middle of an overwrite: put back the
        slot's old record, so the overwrite did not happen rather than
        leaving a record that mixes old and new fields."""
        cdef dh_undo *u = self._undo
        cdef dh_slot *d
        if u.armed != DH_UNDO_ARMED:
            return
        if u.num_slots == self._num_slots and u.slot < self._num_slots:
            d = slot_at(self._base, u.slot)
            if (d.tag == TAG_OCCUPIED and u.old.tag == TAG_OCCUPIED
                    and d.key_lo == u.old.key_lo and d.key_hi == u.old.key_hi):
                d[0] = u.old
                with nogil:
                    msync(self._base, HEADER_SIZE + self._num_slots * SLOT_SIZE, MS_SYNC)
                self.recovery = RepairReport(self._num_entries, [], self._num_slots)
        u.armed = 0

    def _heal_after_unclean_close(self):
        """The last writer did not close cleanly (or the file is new to us).

        Recount, and rebuild if a crash left a duplicate or an unreachable
        copy behind (an interrupted delete).  Damage a crash cannot cause (bad
        tags or compression bytes) is left for ``verify()``/``repair()``.
        """
        cdef scan_t sc
        memset(&sc, 0, sizeof(sc))
        scan_table(self._base, self._num_slots, self._seed, &sc)
        healable = sc.counts[D_UNREACHABLE] + sc.counts[D_DUPLICATE]
        damage = sc.counts[D_BAD_TAG] + sc.counts[D_BAD_COMPRESSION]
        if healable and not damage:
            self._write_acquire(True)
            try:
                # A table with no empty slot gets a bigger one (slots_for).
                self._rebuild_locked(max(self._num_slots, slots_for(sc.occupied)), True)
            finally:
                self._write_release()
            self.recovery = RepairReport(self._num_entries, [], self._num_slots)
        elif self._num_entries != sc.occupied:
            self._num_entries = sc.occupied
            self._store_count()
            self.recovery = RepairReport(self._num_entries, [], self._num_slots)
        self._count_ok = True

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

    cdef int _write_acquire(self, bint block) except -1:
        """Take the writer mutex; returns 0, or 1 if busy and not `block`."""
        if self._state != STATE_OPEN:
            self._raise_unusable()
        if self.readonly:
            raise ReadOnlyIndexError(f"{self.path}: index is open read-only")
        if pthread_mutex_trylock(&self._write_lock) != 0:
            if not block:
                return 1
            with nogil:
                pthread_mutex_lock(&self._write_lock)
        if self._base == NULL:
            pthread_mutex_unlock(&self._write_lock)
            self._raise_unusable()
        return 0

    cdef void _write_release(self) noexcept nogil:
        pthread_mutex_unlock(&self._write_lock)

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
        cdef uint64_t lo, hi, empty = 0, num_slots = 0
        cdef dh_slot copy
        key_to_u128(key, &lo, &hi)
        self._read_acquire()
        cdef int64_t r = probe(self._base, self._mask, self._seed, lo, hi, &empty)
        if r >= 0:
            copy = slot_at(self._base, r)[0]
        elif r != PROBE_MISS:               # damage: note what was seen, under the lock
            copy = slot_at(self._base, empty)[0]
            num_slots = self._num_slots
        self._read_release()
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
        cdef uint64_t lo, hi, empty = 0
        key_to_u128(key, &lo, &hi)
        self._read_acquire()
        cdef int64_t r = probe(self._base, self._mask, self._seed, lo, hi, &empty)
        cdef uint8_t tag = 0
        cdef uint64_t num_slots = self._num_slots
        if r < PROBE_MISS:
            tag = slot_at(self._base, empty).tag
        self._read_release()
        if r < PROBE_MISS:
            self._corrupt_seen(r, empty, tag, num_slots)
        return r >= 0

    def __len__(self):
        cdef scan_t sc
        if self._state != STATE_OPEN:
            self._raise_unusable()
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
        """Records of the occupied slots from ``start``, up to CHUNK slots.

        ``what``: 0 keys, 1 values, 2 items.  Raises ``RuntimeError`` if the
        set of keys changed since ``generation`` (like a dict).
        """
        cdef uint64_t i, end, n = 0
        cdef dh_slot *buf = <dh_slot *>malloc(CHUNK * sizeof(dh_slot))
        cdef _Chunk out = _Chunk()
        if buf == NULL:
            raise MemoryError()
        try:
            self._read_acquire()
            if generation != self._generation:
                self._read_release()
                raise RuntimeError(f"{self.path}: index changed size during iteration")
            end = min(start + CHUNK, self._num_slots)
            for i in range(start, end):
                if slot_at(self._base, i).tag != TAG_EMPTY:
                    buf[n] = slot_at(self._base, i)[0]
                    n += 1
            self._read_release()
            out.next_slot = end
            out.generation = generation
            out.items = []
            for i in range(n):
                if buf[i].tag != TAG_OCCUPIED:
                    raise CorruptIndexError(self.path, f"bad tag 0x{buf[i].tag:02x} met while iterating")
                key = u128_to_int(buf[i].key_lo, buf[i].key_hi)
                if what == 0:
                    out.items.append(key)
                else:
                    rec = self._record(key, &buf[i])
                    out.items.append(rec if what == 1 else (key, rec))
            return out
        finally:
            free(buf)

    def _iter_start(self):
        """(generation, num_slots) for a new iteration."""
        if self._state != STATE_OPEN:
            self._raise_unusable()
        return self._generation, self._num_slots

    def _iterate(self, int what):
        generation, num_slots = self._iter_start()
        cdef uint64_t start = 0
        while start < num_slots:
            chunk = self._chunk(start, what, generation)
            start = chunk.next_slot
            yield from chunk.items

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
            overwrite_slot(self._undo, d, <uint64_t>r, self._num_slots, m)
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
        fill_slot(d, lo, hi, m)
        self._num_entries += 1
        self._generation += 1
        self._store_count()
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
        cdef uint64_t empty = 0, i, j, h, n
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
        j = i
        for n in range(self._num_slots):
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
        self._exclusive_release()
        return True

    def __delitem__(self, key):
        if not self.delete(key):
            raise KeyError(key)

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
            os.fsync(fd)
            os.replace(tmp, self._file)
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

    def _scan(self, size_t cap):
        """Run the table scan under the read lock; returns (scan dict, defect texts)."""
        cdef scan_t sc
        cdef size_t k
        memset(&sc, 0, sizeof(sc))
        sc.cap = cap
        sc.defects = <defect_t *>malloc((cap or 1) * sizeof(defect_t))
        if sc.defects == NULL:
            raise MemoryError()
        try:
            self._read_acquire()
            try:
                scan_table(self._base, self._num_slots, self._seed, &sc)
                texts = [_defect_text(sc.defects[k].kind, sc.defects[k].slot, self._base)
                         for k in range(sc.ndefects)]
                dropped = [(sc.defects[k].slot, texts[k]) for k in range(sc.ndefects)
                           if sc.defects[k].kind in (D_BAD_TAG, D_BAD_COMPRESSION)]
                header = (<char *>self._base)[:HEADER_SIZE]
                num_entries = self._num_entries
                # Under the read lock: close() and a grow's swap wait for it,
                # so the descriptor cannot be closed (or reused) meanwhile.
                file_bytes = os.fstat(self._fd).st_size
            finally:
                self._read_release()
        finally:
            free(sc.defects)
        info = dict(occupied=sc.occupied, empties=sc.empties, longest=sc.longest,
                    total_probe=sc.total_probe, counts=[sc.counts[k] for k in range(<size_t>D_KINDS)],
                    header=header, num_entries=num_entries, dropped=dropped,
                    file_bytes=file_bytes)
        return info, texts

    def verify(self):
        """Check the whole table; raise ``CorruptIndexError`` listing every defect.

        Checks tags, compression bytes, reserved bytes, that every key is
        reachable from its home slot, duplicate keys, the header count and
        reserved header bytes, and that an empty slot exists.  O(slots).
        """
        info, texts = self._scan(1000)
        counts = info["counts"]
        defects = []
        header = info["header"]
        if any(header_reserved(header)):
            defects.append("nonzero reserved bytes in the header")
        if self._seed == 0:
            defects.append("hash seed is zero")
        hdr_count = unpack_header(header)[3]
        if hdr_count != info["occupied"]:
            defects.append(f"header counts {hdr_count} entries but {info['occupied']} slots are occupied")
        if info["empties"] == 0:
            defects.append("no empty slot: lookups of absent keys cannot terminate")
        defects.extend(texts)
        shown = len(texts)
        total = sum(counts)
        if total > shown:
            defects.append(f"... and {total - shown} more slot defects")
        if defects:
            raise CorruptIndexError(self.path, defects)

    def stats(self):
        """Entries, slots, load factor, file bytes, longest and mean probe.  O(slots)."""
        info, _ = self._scan(0)
        occupied = info["occupied"]
        return IndexStats(
            entries=occupied,
            slots=self._num_slots,
            load_factor=occupied / self._num_slots,
            file_bytes=info["file_bytes"],
            longest_probe=info["longest"],
            mean_probe=(info["total_probe"] / occupied) if occupied else 0.0,
        )

    def repair(self):
        """Rebuild a valid table from every readable entry; report what was dropped.

        Slots with a bad tag or compression byte are dropped (and listed);
        unreachable entries are re-homed, duplicates kept once, reserved bytes
        zeroed, the count fixed, a zero seed replaced.  The rebuilt file
        replaces the old one atomically, as a grow does.
        """
        self._write_acquire(True)
        try:
            info, _ = self._scan(1 << 20)
            kept_max = info["occupied"]
            slots = max(self._num_slots, slots_for(kept_max))
            self._rebuild_locked(slots, True, 0 if self._seed else _files.new_seed())
            self._count_ok = True
            return RepairReport(self._num_entries, info["dropped"], self._num_slots)
        finally:
            self._write_release()

    # -- lifetime --------------------------------------------------------------

    def close(self):
        """Flush (if writable), record a clean close, unmap, unlock.  Idempotent.

        Other threads blocked on the index get ``IndexClosedError``.
        """
        if self._state == STATE_FORKED:
            self._release_resources(unlock=False)
            return
        if self._state != STATE_OPEN:
            return
        with nogil:
            pthread_mutex_lock(&self._write_lock)
        try:
            if self._state != STATE_OPEN:
                return
            error = None
            if not self.readonly:
                try:
                    self._sync_locked()
                    self._lock.mark_clean(os.fstat(self._fd), self._num_entries)
                except OSError as exc:
                    error = exc
            self._exclusive_acquire()
            self._base = NULL
            self._state = STATE_CLOSED
            self._exclusive_release()
        finally:
            pthread_mutex_unlock(&self._write_lock)
        self._release_resources(unlock=True)
        _open_indexes.discard(self)
        if error is not None:
            raise error

    def _release_resources(self, bint unlock):
        self._base = NULL
        self._view = None
        self._undo = NULL
        self._undo_view = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._lock is not None:
            self._lock.close(unlock=unlock)
        if self._state == STATE_OPEN:
            self._state = STATE_CLOSED

    def _forked(self):
        """In a forked child: make the inherited copy unusable, drop its descriptors.

        The lock file's descriptor is closed without unlocking (the flock
        belongs to the parent's open file description), so the parent's lock
        ends when the parent closes or dies, however long the child lives.
        """
        if self._state != STATE_OPEN:
            return
        self._state = STATE_FORKED
        self._base = NULL
        self._undo = NULL
        self._undo_view = None
        if self._lock is not None:
            self._lock.close(unlock=False)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._view = None
        try:
            self._mmap.close()
            self._mmap = None
        except BufferError:     # a view exported by a parent thread: unmapped at exit
            pass

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
            self._release_resources(unlock=False)

    def __dealloc__(self):
        if self._locks_ready and self._state != STATE_FORKED:
            pthread_rwlock_destroy(&self._map_lock)
            pthread_mutex_destroy(&self._write_lock)

    def __repr__(self):
        state = "closed" if self._state != STATE_OPEN else (
            f"{self._num_entries} entries, {self._num_slots} slots")
        mode = ", readonly" if self.readonly else ""
        return f"<DiskHashIndex {self.path!r} ({state}{mode})>"

    def __reduce__(self):
        raise TypeError("a DiskHashIndex cannot be pickled; pass its path and open it again")


def repair(path):
    """Open the index at ``path`` for writing, repair it, close it; returns the report."""
    with DiskHashIndex(path) as idx:
        return idx.repair()
