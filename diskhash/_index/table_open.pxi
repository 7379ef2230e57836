# Included by table.pyx (one module, so the hot path stays inlined): opening --
# argument checks, validating and mapping the file, rolling back a torn
# overwrite, healing after an unclean close.
import math
import numbers
import os

from libc.stdint cimport uint64_t
from libc.string cimport memset
from diskhash._index.locks cimport dh_robust_mutex_init
from posix.mman cimport MS_SYNC, msync
from diskhash._format.sochidx2 cimport (
    DH_MAX_SLOTS,
    DH_SHARED_MAGIC,
    DH_SHARED_NEEDS_HEAL,
    DH_UNDO_ARMED,
    HEADER_SIZE,
    OFF_NUM_ENTRIES,
    SHARED_AT,
    SLOT_SIZE,
    TAG_OCCUPIED,
    dh_load_acquire,
    dh_seq_begin,
    dh_seq_end,
    dh_shared,
    dh_shared_mutex,
    dh_slot,
    dh_store_release,
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


cdef int open_index(DiskHashIndex self, path, bint readonly, capacity, timeout,
                    bint exclusive) except -1:
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
    self.exclusive = exclusive
    self._timeout = timeout
    # Nothing is created (no lock file, no directory) until we know the
    # path is free or holds an index.
    if not _files.check_existing(self._file, self.path):
        if readonly:
            raise FileNotFoundError(2, "no index file to open read-only", self.path)
        _files.make_parent_dirs(self._file)
    # Shared (the default): every open holds the lock file shared; writers
    # take turns on the robust mutex of its shared page.  exclusive=True:
    # this open is the only one (today's rule for a writer, and no per-call
    # cross-process lock).
    self._lock = _files.IndexLock(self._file, exclusive=exclusive, timeout=timeout,
                                  name=self.path, shared=not exclusive, readonly=readonly,
                                  exclusive_option=True)
    try:
        open_or_create(self, capacity)
    except BaseException:
        if not readonly and self._lock.quiet and not os.path.lexists(self._file):
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
    lock = self._lock
    created = False
    if not self.readonly:
        with lock.creating():       # (two processes opening a missing index create it once)
            if lock.quiet:          # nobody else has it open: a crashed grow's files can go
                _files.remove_leftovers(self._file)
            if not os.path.exists(self._file):
                create_table(self, slots_for(capacity or 0))
                created = True
    page = lock.map_page(not self.readonly)
    if page is not None:
        self._undo_view = page
        self._undo = <dh_undo *>&self._undo_view[0]
        if not self.exclusive:
            self._shared = <dh_shared *>(<unsigned char *>self._undo + SHARED_AT)
            # The generation before the file: a grow published meanwhile
            # makes them differ, and the first read re-maps.
            self._table_gen = dh_load_acquire(&self._shared.table_gen)
    st = open_table_file(self)
    if lock.quiet:
        open_alone(self, created, st, page is not None and lock.writable_fd)
        lock.end_quiet()
    else:
        open_beside_others(self)
    if not self.readonly:
        lock.mark_dirty()
        if capacity:
            self.reserve(capacity)
    return 0


cdef int open_alone(DiskHashIndex self, bint created, st, bint page_writable) except -1:
    """No other process has the index open: recover what a crash left (the
    recount after an unclean close, a torn overwrite) and reset the shared
    page (a fresh robust mutex, the seqlock even)."""
    cdef dh_shared *sh = self._shared
    marker = self._lock.read_marker()
    clean = (marker is not None and marker.matches(st)
             and marker.entries == self._num_entries)
    # A file we just created is empty and consistent: no scan needed.
    self._count_ok = (clean or created) and self._num_entries <= self._num_slots
    # A reader leaves a page in order as it is (a read-only open writes nothing).
    if sh != NULL and page_writable and (not self.readonly or sh.magic != DH_SHARED_MAGIC
                                         or sh.seq & 1 or sh.owner_pid != 0):
        if sh.magic != DH_SHARED_MAGIC:
            memset(sh, 0, sizeof(dh_shared))
        elif sh.seq & 1 or sh.flags & DH_SHARED_NEEDS_HEAL:
            self._count_ok = False          # a writer died in the middle of a change
        sh.flags = 0
        sh.owner_pid = 0
        if dh_robust_mutex_init(dh_shared_mutex(sh)) != 0:
            raise OSError(f"{self.path}: cannot create the cross-process writer lock")
        sh.seq = (sh.seq + 1) & ~<uint64_t>1
        dh_store_release(&sh.magic, DH_SHARED_MAGIC)
        self._table_gen = sh.table_gen
        if self.readonly and not self._count_ok:
            sh.flags = DH_SHARED_NEEDS_HEAL     # the next writer recounts
    elif sh != NULL and sh.magic != DH_SHARED_MAGIC:
        self._shared = NULL                 # a reader that cannot write the page, and no writer made it
    if not self.readonly:
        roll_back_torn_overwrite(self)
        if not self._count_ok:
            self._write_acquire(True)
            try:
                heal_locked(self)
            finally:
                self._write_release()
    return 0


cdef int open_beside_others(DiskHashIndex self) except -1:
    """Other processes have the index open: they own its state.  A writer
    heals now what a killed writer or an unclean close left (its first
    write lock does that)."""
    cdef dh_shared *sh = self._shared
    if sh == NULL:
        self._count_ok = True
        return 0
    if sh.magic != DH_SHARED_MAGIC:
        if not self._lock.writable_fd:
            self._shared = NULL
            self._count_ok = True
            return 0
        with self._lock.creating():         # (a page that an old reader left unmade)
            if sh.magic != DH_SHARED_MAGIC:
                memset(sh, 0, sizeof(dh_shared))
                if dh_robust_mutex_init(dh_shared_mutex(sh)) != 0:
                    raise OSError(f"{self.path}: cannot create the cross-process writer lock")
                dh_store_release(&sh.magic, DH_SHARED_MAGIC)
    self._count_ok = True
    if not self.readonly and sh.flags & DH_SHARED_NEEDS_HEAL:
        self._write_acquire(True)           # heals (re-maps, reads the count)
        self._write_release()
    return 0


cdef object open_table_file(DiskHashIndex self):
    """Open, lock the file's inode, validate the header in O(1), make
    sure a writable table's blocks exist, and map the table."""
    self._fd, st = _files.open_table(self._file, self.path, writable=not self.readonly)
    self._lock.lock_table(self._fd, writer=not self.readonly)
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
    self.resident = make_resident(self._resident_budget, self._base, _files.table_bytes(num_slots))
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


cdef int heal_locked(DiskHashIndex self) except -1:
    """The last writer did not close cleanly, or died holding the writer lock.

    Recount, and rebuild if a crash left a duplicate or an unreachable
    copy behind (an interrupted delete).  Damage a crash cannot cause (bad
    tags or compression bytes) is left for ``verify()``/``repair()``.  The
    caller holds the writer lock (other processes' readers may be reading:
    the scan only reads, the count is stored as a slot change, a rebuild
    publishes a new file).
    """
    cdef scan_t sc
    memset(&sc, 0, sizeof(sc))
    scan_table(self._base, self._num_slots, self._seed, &sc)
    healable = sc.counts[D_UNREACHABLE] + sc.counts[D_DUPLICATE]
    damage = sc.counts[D_BAD_TAG] + sc.counts[D_BAD_COMPRESSION]
    if healable and not damage:
        # A table with no empty slot gets a bigger one (slots_for).
        self._rebuild_locked(max(self._num_slots, slots_for(sc.occupied)), True)
        self.recovery = RepairReport(self._num_entries, [], self._num_slots)
    elif self._num_entries != sc.occupied:
        self._exclusive_acquire()
        change_begin(self._shared)
        self._num_entries = sc.occupied
        self._store_count()
        change_end(self._shared)
        self._exclusive_release()
        self.recovery = RepairReport(self._num_entries, [], self._num_slots)
    self._count_ok = True
    if self._shared != NULL:
        self._shared.flags = 0
    return 0


# ---------------------------------------------------------------------------
# Several processes: catching up with what the others did.

cdef bint remap_table(DiskHashIndex self) except -1:
    """Map the table file now at the path, if it is not the one mapped (a
    grow or repair of another process replaced it); whether it was not.  The caller holds the
    in-process writer mutex; readers of this process keep the old map until
    the swap, as in a grow."""
    cdef const unsigned char[::1] new_view
    cdef uint64_t gen = dh_load_acquire(&self._shared.table_gen)
    fd, st = _files.open_table(self._file, self.path, writable=not self.readonly)
    try:
        mine = os.fstat(self._fd)
        if (st.st_ino, st.st_dev) == (mine.st_ino, mine.st_dev):
            os.close(fd)
            self._exclusive_acquire()
            self._table_gen = gen
            self._exclusive_release()
            return False
        self._lock.lock_table(fd, writer=not self.readonly)
        num_slots, num_entries, seed = _files.read_header(fd, st, self.path)
        if num_slots > DH_MAX_SLOTS:
            raise CorruptIndexError(self.path, f"slot count {num_slots} is more than 2**56")
        mm = _files.map_table(fd, num_slots, writable=not self.readonly)
    except BaseException:
        os.close(fd)
        raise
    new_view = mm
    resident = make_resident(self._resident_budget, <unsigned char *>&new_view[0],
                             _files.table_bytes(num_slots))
    old_mm, old_fd = self._mmap, self._fd
    self._exclusive_acquire()
    self._view = new_view
    self._base = <unsigned char *>&new_view[0]
    self._mmap = mm
    self._fd = fd
    self._num_slots = num_slots
    self._mask = num_slots - 1
    self._seed = seed
    self._num_entries = num_entries
    self._generation += 1
    self._table_gen = gen
    self.resident = resident
    self._exclusive_release()
    new_view = None
    retire_map(self, old_mm, old_fd)    # (often the old file's last holder: not on this thread)
    return True


cdef int remap_for_reader(DiskHashIndex self) except -1:
    """A read found the table replaced by another process: re-map, between
    this process's writes (their mutex; the cross-process one is not
    needed, so a read never waits for another process's writer)."""
    cdef bint mine = self._xdepth and self._xowner == dh_thread_id()
    if not mine and pthread_mutex_trylock(&self._write_lock) != 0:
        with nogil:
            pthread_mutex_lock(&self._write_lock)
    try:
        if self._state != STATE_OPEN or self._base == NULL:
            self._raise_unusable()
        if self._shared.table_gen != self._table_gen:
            remap_table(self)
    finally:
        if not mine:
            pthread_mutex_unlock(&self._write_lock)
    return 0


cdef int sync_with_others(DiskHashIndex self, bint recovering) except -1:
    """A writer that just took the cross-process mutex: re-map a table file
    another process replaced, heal what a killed writer left."""
    cdef dh_shared *sh = self._shared
    if recovering or sh.table_gen != self._table_gen:
        remap_table(self)
    if sh.flags & DH_SHARED_NEEDS_HEAL:
        heal_locked(self)
    return 0


cdef int recover_dead_writer(DiskHashIndex self) except -1:
    """The cross-process mutex came with EOWNERDEAD: its holder died.

    A grow it published without bumping the generation is adopted (the
    file at the path is what counts); a slot change it left half done (the
    seqlock odd) is undone through the undo page, the seqlock made even and
    a recount (and heal) asked for, which the caller runs next.  A grow or
    repair it died in left its temporary table beside the index: no other
    grow can be running (they all hold the mutex), so those files go now
    rather than when an open finds itself alone, which a server whose
    workers are recycled may never see."""
    cdef dh_shared *sh = self._shared
    sh.owner_pid = _pid
    swapped = remap_table(self)
    _files.remove_leftovers(self._file, ("grow-", "repair-"))
    self._exclusive_acquire()
    if sh.seq & 1:
        roll_back_torn_overwrite(self)
        sh.flags |= DH_SHARED_NEEDS_HEAL
        dh_seq_end(&sh.seq)
    if swapped:
        dh_seq_begin(&sh.seq)
        dh_store_release(&sh.table_gen, sh.table_gen + 1)
        self._table_gen = sh.table_gen
        dh_seq_end(&sh.seq)
    self._exclusive_release()
    return 0
