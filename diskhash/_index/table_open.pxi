# Included by table.pyx (one module, so the hot path stays inlined): opening --
# argument checks, validating and mapping the file, rolling back a torn
# overwrite, healing after an unclean close.
import math
import numbers
import os

from libc.stdint cimport uint64_t
from libc.string cimport memset
from posix.mman cimport MS_SYNC, msync
from diskhash._format.sochidx2 cimport (
    DH_MAX_SLOTS,
    DH_UNDO_ARMED,
    HEADER_SIZE,
    SLOT_SIZE,
    TAG_OCCUPIED,
    dh_slot,
    dh_undo,
    slot_at,
)

from diskhash._fs import files as _files
from diskhash._types import RepairReport
from diskhash.errors import CorruptIndexError, DiskHashError


def _lock_timeout(value):
    """``timeout=``: seconds >= 0 (inf: wait forever, as None does)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:       # an int beyond float range: forever if positive
        if value > 0:
            return None
        raise ValueError(f"timeout must be >= 0 seconds or None, got {value!r}") from None
    if math.isnan(seconds) or seconds < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {value!r}")
    return seconds


cdef int open_index(DiskHashIndex self, path, bint readonly, capacity, timeout) except -1:
    if self._state != STATE_CLOSED or self._lock is not None:
        raise DiskHashError("DiskHashIndex.__init__ called twice")
    name = os.fsdecode(path)
    if not name:
        raise ValueError("path is empty: name the index file")
    if name.endswith(os.sep) and not os.path.isdir(name):
        # abspath() would drop the slash and make a file of what names a directory
        raise NotADirectoryError(20, "a path ending in '/' names a directory, not an index file",
                                 name)
    if capacity is not None:
        capacity = _entry_count(capacity, "capacity")
        if readonly:
            raise ValueError("capacity= needs a writable index (readonly=True given)")
    timeout = _lock_timeout(timeout)
    self.path = os.path.abspath(name)
    # Every file operation goes to the resolved path, so that a symlink
    # and its target share one lock file, and a grow replaces the target,
    # never the link (docs/guide/files-and-locks.md).
    self._file = os.path.realpath(self.path)
    self.readonly = readonly
    # Nothing is created (no lock file, no directory) until we know the
    # path is free or holds an index.
    if not _files.check_existing(self._file, self.path):
        if readonly:
            raise FileNotFoundError(2, "no index file to open read-only", self.path)
        _files.make_parent_dirs(self._file)
    self._lock = _files.IndexLock(self._file, exclusive=not readonly, timeout=timeout,
                                  name=self.path)
    try:
        open_or_create(self, capacity)
    except BaseException:
        if not readonly and not os.path.lexists(self._file):
            # A create that failed (disk full, too big): leave no lock file.
            lock, self._lock = self._lock, None
            release_resources(self, True)
            lock.discard_file()
        else:
            release_resources(self, True)
        raise
    _open_indexes.add(self)
    return 0


cdef int open_or_create(DiskHashIndex self, capacity) except -1:
    created = False
    if not self.readonly:
        _files.remove_leftovers(self._file)
        if not os.path.exists(self._file):
            create_table(self, slots_for(capacity or 0))
            created = True
    st = open_table_file(self)
    marker = self._lock.read_marker()
    clean = (marker is not None and marker.matches(st)
             and marker.entries == self._num_entries)
    # A file we just created is empty and consistent: no scan needed.
    self._count_ok = (clean or created) and self._num_entries <= self._num_slots
    if not self.readonly:
        self._undo_view = self._lock.map_undo()
        self._undo = <dh_undo *>&self._undo_view[0]
        roll_back_torn_overwrite(self)
        if not self._count_ok:
            heal_after_unclean_close(self)
        self._lock.mark_dirty()
        if capacity:
            self.reserve(capacity)
    return 0


cdef object open_table_file(DiskHashIndex self):
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


cdef int create_table(DiskHashIndex self, uint64_t num_slots) except -1:
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
        try:
            _files.unlock_table(fd)     # (a child forked meanwhile must not keep it)
        finally:
            os.close(fd)
    return 0


cdef int roll_back_torn_overwrite(DiskHashIndex self) except -1:
    """The last writer died in the middle of an overwrite: put back the
    slot's old record, so the overwrite did not happen rather than
    leaving a record that mixes old and new fields."""
    cdef dh_undo *u = self._undo
    cdef dh_slot *d
    if u.armed != DH_UNDO_ARMED:
        return 0
    if u.num_slots == self._num_slots and u.slot < self._num_slots:
        d = slot_at(self._base, u.slot)
        if (d.tag == TAG_OCCUPIED and u.old.tag == TAG_OCCUPIED
                and d.key_lo == u.old.key_lo and d.key_hi == u.old.key_hi):
            d[0] = u.old
            with nogil:
                msync(self._base, HEADER_SIZE + self._num_slots * SLOT_SIZE, MS_SYNC)
            self.recovery = RepairReport(self._num_entries, [], self._num_slots)
    u.armed = 0
    return 0


cdef int heal_after_unclean_close(DiskHashIndex self) except -1:
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
    return 0
