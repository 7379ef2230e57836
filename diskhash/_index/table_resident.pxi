# Included by table.pyx: keeping the table map resident (``resident=``).
#
# A store's index is small beside its payloads (40-byte slots at a load of
# 0.4-0.75: 53-107 bytes an entry), but a get from a store far larger than
# memory faults in its index page and its payload page: two device reads.
# Locked in memory, the index costs none, and a cold get one.
import numbers

from posix.mman cimport MADV_DONTNEED, MADV_WILLNEED, madvise, mlock, munlock

# ``resident=True``: no budget.
cdef object _NO_BUDGET = 1 << 63


def resident_budget(value, name="resident"):
    """``resident=``: None or False (off), True (whatever the table's size) or a
    budget in bytes (an int >= 1): the table is kept resident while its file
    is no bigger."""
    if value is None or value is False:
        return None
    if value is True:
        return _NO_BUDGET
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be None, a bool or a budget in bytes (an int), "
                        f"not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a budget of at least 1 byte, got {value!r}")
    return int(value)


cdef object make_resident(object budget, unsigned char *base, uint64_t size):
    """Keep ``size`` bytes mapped at ``base`` in memory if they fit ``budget``:
    ``"locked"`` (mlock: every page read now, and never evicted while the map
    lives -- munmap drops the lock), ``"prefetched"`` (mlock refused, as
    RLIMIT_MEMLOCK does for a process without CAP_IPC_LOCK:
    MADV_WILLNEED starts reading the pages, which the kernel may evict again
    under memory pressure), or None (off, or the table is over budget).
    Reads the whole table from the device when it is not cached: the GIL is
    released meanwhile."""
    cdef int rc
    if budget is None or base == NULL or size > budget:
        return None
    with nogil:
        rc = mlock(base, size)
    if rc == 0:
        return "locked"
    with nogil:
        madvise(base, size, MADV_WILLNEED)
    return "prefetched"


cdef int set_resident(DiskHashIndex self, budget) except -1:
    """``DiskHashIndex.set_resident``: under the in-process writer mutex (grows and
    re-maps, which apply the budget to the map they make, wait), and the map
    lock shared (close waits)."""
    cdef uint64_t size
    cdef bint mine = self._xdepth and self._xowner == dh_thread_id()
    if not mine and pthread_mutex_trylock(&self._write_lock) != 0:
        with nogil:
            pthread_mutex_lock(&self._write_lock)
    try:
        self._read_acquire()
        try:
            size = HEADER_SIZE + self._num_slots * SLOT_SIZE
            if self.resident == "locked" and (budget is None or size > budget):
                with nogil:
                    munlock(self._base, size)
            self._resident_budget = budget
            self.resident = make_resident(budget, self._base, size)
        finally:
            self._read_release()
    finally:
        if not mine:
            pthread_mutex_unlock(&self._write_lock)
    return 0


def drop_pages(DiskHashIndex index not None):
    """Let go of this process's mapping of the table's pages (MADV_DONTNEED:
    they stay in the page cache, written or not, and the next probe of one
    maps it again); nothing while the map is kept resident.  For a walk that
    probes every key of a big table (the Parquet export): the pages it
    touched would otherwise stay in the process's resident set, the whole
    table by its end.  Under the map lock, shared (close waits)."""
    index._read_acquire()
    try:
        if index.resident is None and index._base != NULL:
            with nogil:
                madvise(index._base, HEADER_SIZE + index._num_slots * SLOT_SIZE, MADV_DONTNEED)
    finally:
        index._read_release()
