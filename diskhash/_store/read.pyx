# cython: language_level=3, binding=False, boundscheck=False, wraparound=False
"""The PayloadStore's read hot paths and whole-log passes, over the data file's map.

``MapReader(mapping, index, decode, lz4)`` holds a buffer of the map (an
``mmap``).  ``get(key, verify, limit)`` is a whole ``store.get`` in one call:
it probes the ``DiskHashIndex`` (cimported; its read lock, as its own
``get``), checks the frame against the slot and, if asked, the CRC-32C
checksum (``_format/crc32c.h``), and returns the bytes (decoded), None
for an absent key, or ``FALLBACK``: anything unusual is the Python path's,
which remaps or raises, so the messages live in one place
(``diskhash/_store/store.py``).  ``get_many`` does the same for a batch.
``read(meta, verify)`` checks a given ``PayloadMeta`` and returns the bytes
or a small int saying why not (``BEYOND`` the map, ``MISMATCH``,
``BAD_CHECKSUM``).  The GIL is held while copying: a few KiB at most (bigger
records are read with ``pread``).

The whole-log passes that need the store's own tables or its index:
``LogFold`` (the log's final state kept in C, for ``rebuild_index``),
``copy_live``/``copy_live_into`` (compaction's copy, the new places in a
``RowLog``).  Each frame is checked by ``frame_end`` (``_format/frame.pxd``),
inline here as in ``_format/frame.pyx``'s ``scan_into`` (the replay at open).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_SIZE
from cpython.long cimport PyLong_AsUnsignedLongLongMask
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, realloc
from libc.string cimport memcpy, memset
from posix.mman cimport (
    MADV_HUGEPAGE,
    MADV_WILLNEED,
    MAP_ANONYMOUS,
    MAP_FAILED,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    madvise,
    mmap,
    munmap,
)
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.unistd cimport _SC_PAGESIZE, sysconf

from diskhash._index.convert cimport key_to_u128
from diskhash._store.shared cimport SharedPage
from diskhash._format.sochidx2 cimport (
    DH_PREFETCH,
    MAX_COMPRESSION,
    PROBE_MISS,
    dh_load_acquire,
    dh_slot,
    hash_u128,
    probe_from,
    slot_at,
)
from diskhash._format.frame cimport (
    FRAME_SIZE,
    HEADER_SIZE,
    KIND_PUT,
    dh_crc32c,
    dh_crc32c_init,
    frame_end,
    frame_key,
    frame_matches,
    frame_t,
    prefetch_frame,
)
from diskhash._index.table cimport DiskHashIndex

dh_crc32c_init()

BEYOND = 1
MISMATCH = 2
BAD_CHECKSUM = 3
#: ``MapReader.get``: the record needs the Python path (see there).
FALLBACK = 4


def copy_live(data, Py_ssize_t p, long long base, get, list out, dict live, long long new_base):
    """Compaction's copy step over ``data[p:]`` (at file offset ``base``): each
    valid put frame that ``get(key)`` (the index) still points at is appended,
    as bytes, to ``out`` and recorded in ``live`` at its new place (``new_base``
    onwards).  Returns ``(stop, new_base)``; frames checked by ``frame_end``.
    """
    cdef Py_buffer view
    cdef frame_t f
    cdef const uint8_t *b
    cdef Py_ssize_t n, end
    if p < 0:
        raise ValueError(f"start offset must be >= 0, not {p}")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        b = <const uint8_t *>view.buf
        n = view.len
        while p + FRAME_SIZE <= n:
            end = frame_end(b, p, n, &f)
            if end < 0:
                break
            if f.kind == KIND_PUT:
                key = frame_key(&f)
                m = get(key)
                if m is not None and (not PyTuple_Check(m) or PyTuple_GET_SIZE(m) != 5):
                    raise TypeError(f"get({key}) returned {type(m).__name__}, not a PayloadMeta or None")
                if m is not None and <long long>(<object>PyTuple_GET_ITEM(m, 1)) == base + p + FRAME_SIZE:
                    out.append(PyBytes_FromStringAndSize(<const char *>(b + p), end - p))
                    live[key] = (new_base + FRAME_SIZE, f.stored_length, f.compression, f.uncompressed_length)
                    new_base += end - p
            p = end
        return p, new_base
    finally:
        PyBuffer_Release(&view)


cdef enum:
    SLOT_ABSENT = 0
    SLOT_FOUND = 1
    SLOT_DAMAGED = 2      # a bad tag or a full table: DiskHashIndex.get raises
    GET_CHUNK = 4096        # get_many: keys probed per shared hold of the index's map lock
    PREFETCH_AHEAD = 8      # get_many: the slot / frame this many keys ahead is prefetched
    PREFETCH_BYTES = 4096   # get_many: ... up to this many bytes of the frame

cdef object _FALLBACK = FALLBACK

cdef enum:
    COLD_SAMPLE = 8         # get: one found record in this many is timed
    COLD_HOLD = 4           # get: this many fast timed gets in a row end the cold regime

#: ``MapReader.cold_ns``'s default: a timed frame read slower than this (in
#: nanoseconds) waited for the device.  A read from the page cache, even
#: through a minor fault, takes a few microseconds; one from the device
#: tens of microseconds (an SSD) or milliseconds (a disk).
COLD_NS = 12_000

cdef uint64_t _PAGE = <uint64_t>sysconf(_SC_PAGESIZE)


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec t
    clock_gettime(CLOCK_MONOTONIC, &t)
    return <int64_t>t.tv_sec * 1000000000 + t.tv_nsec


cdef inline void _prefetch_frame(const uint8_t *base, uint64_t size, const dh_slot *s) noexcept nogil:
    """Ask for the cache lines of the frame ``s`` points at (up to PREFETCH_BYTES of it)."""
    prefetch_frame(base, size, s.offset, s.length, PREFETCH_BYTES)


cdef inline int _probe_copy(DiskHashIndex index, uint64_t lo, uint64_t hi,
                            dh_slot *out) except -1:
    """Probe ``index`` for the key as ``DiskHashIndex.get`` does -- under its
    read lock (taken without the GIL if it must wait; it raises
    ``IndexClosedError`` once closed), the slot copied out before the lock is
    let go, since a grow may swap and unmap the table right after."""
    cdef uint64_t empty = 0
    cdef int64_t r
    index._read_acquire()
    r = probe_from(index._base, index._mask, hash_u128(lo, hi, index._seed) & index._mask,
                   lo, hi, &empty)
    if r >= 0:
        out[0] = slot_at(index._base, <uint64_t>r)[0]
    index._read_release()
    if r >= 0:
        return SLOT_FOUND
    return SLOT_ABSENT if r == PROBE_MISS else SLOT_DAMAGED


cdef class MapReader:
    """A buffer of a map of the data file, for ``read`` and the fused ``get``.

    ``MapReader(mapping, index=None, decode=None, lz4=None)``: ``index`` is
    the generation's ``DiskHashIndex`` (``get``/``get_many`` probe it
    directly), ``decode(compression, data, uncompressed_length)``
    decompresses (a ``ValueError`` from it sends the record to the Python
    path), ``lz4`` (``lz4.block.decompress``) decodes LZ4 records directly.

    A store bigger than memory reads most records from the device, and the
    map is ``MADV_RANDOM`` (a fault reads its one page, no more), so a frame
    that crosses a page boundary -- a quarter of 1 KiB records, since frames
    are back to back -- costs two faults, each a device request waited for in
    turn.  ``get`` therefore asks for all the frame's pages in one
    ``madvise(MADV_WILLNEED)`` before it touches them, but only while the map
    reads cold: a system call on every such get would cost a warm get more
    than the copy.  One found record in ``COLD_SAMPLE`` has its frame read
    timed; one slower than ``cold_ns`` sets ``cold``, and ``COLD_HOLD`` fast
    ones in a row clear it.  A wrong guess costs a system call (warm) or a
    second device request (cold), never a wrong byte.  ``frame_requests``
    counts the madvise calls made.
    """

    cdef Py_buffer view
    cdef bint held
    cdef const uint8_t *base
    cdef readonly Py_ssize_t size
    cdef DiskHashIndex index
    cdef object decode
    cdef object lz4
    cdef SharedPage page
    cdef uint64_t seen
    #: The map reads cold (see the class docstring): ``get`` asks for a
    #: frame's pages in one request.  Settable (tests, benchmarks).
    cdef public bint cold
    #: A timed frame read slower than this (ns) reads cold.
    cdef public int64_t cold_ns
    #: ``madvise(MADV_WILLNEED)`` calls made for frames that cross a page.
    cdef readonly uint64_t frame_requests
    cdef uint32_t _found          # records found by get (every COLD_SAMPLE-th is timed)
    cdef uint32_t _fast           # fast timed gets in a row

    def __cinit__(self, mapping, DiskHashIndex index=None, decode=None, lz4=None):
        PyObject_GetBuffer(mapping, &self.view, PyBUF_SIMPLE)
        self.held = True
        self.base = <const uint8_t *>self.view.buf
        self.size = self.view.len
        self.index = index
        self.decode = decode
        self.lz4 = lz4
        self.cold_ns = COLD_NS

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False

    def watch(self, SharedPage page, uint64_t seen):
        """``get`` answers ``FALLBACK`` once ``page``'s generation count is not
        ``seen``: another process switched the store's generation, which the
        Python path opens (``Writer.current``)."""
        self.page = page
        self.seen = seen

    def release(self):
        """Let go of the map (reads then answer ``BEYOND``), so it can be closed."""
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False
        self.base = NULL
        self.size = 0

    cdef object _payload(self, const dh_slot *s, bint verify, uint64_t limit):
        """The checked payload of the record in slot copy ``s``, or None when the
        Python path must take it: unknown compression byte, more than ``limit``
        stored bytes, beyond the map, a frame that does not match the slot, a
        checksum mismatch, or a payload that does not decode.  The GIL is held
        throughout, so ``release()`` cannot run in the middle."""
        cdef frame_t f
        cdef uint64_t offset = s.offset
        cdef uint64_t length = s.length
        cdef const uint8_t *p
        if s.compression > MAX_COMPRESSION or length > limit:
            return None
        # (offset + length could wrap past 2**64: compare without adding)
        if (offset < HEADER_SIZE + FRAME_SIZE or offset > <uint64_t>self.size
                or length > <uint64_t>self.size - offset):
            return None
        p = self.base + offset - FRAME_SIZE
        memcpy(&f, p, FRAME_SIZE)
        if not frame_matches(&f, s.key_lo, s.key_hi, s.length, s.compression, s.uncompressed_length):
            return None
        if verify and dh_crc32c(0, p + 4, <size_t>(FRAME_SIZE - 4 + length)) != f.checksum:
            return None
        data = PyBytes_FromStringAndSize(<const char *>(p + FRAME_SIZE), <Py_ssize_t>length)
        if s.compression == 0:
            return data
        if s.compression == 1 and self.lz4 is not None:
            # lz4.block.decompress called directly (no Python frame between):
            # any failure, or a wrong length, is the Python path's to report.
            try:
                out = self.lz4(data, s.uncompressed_length)
            except Exception:
                return None
            if PyBytes_CheckExact(out) and PyBytes_GET_SIZE(out) == <Py_ssize_t>s.uncompressed_length:
                return out
            return None
        if self.decode is None:
            return None
        try:
            return self.decode(s.compression, data, s.uncompressed_length)
        except ValueError:
            return None

    cdef void _request_frame(self, const dh_slot *s) noexcept:
        """Ask for every page of the frame ``s`` points at in one request, when
        it spans more than one (nothing when it is beyond the map: ``_payload``
        sends that to the Python path)."""
        cdef uint64_t offset = s.offset
        cdef uint64_t first, last
        if (offset < HEADER_SIZE + FRAME_SIZE or offset > <uint64_t>self.size
                or s.length > <uint64_t>self.size - offset or s.length == 0):
            return
        first = (offset - FRAME_SIZE) & ~(_PAGE - 1)
        last = (offset + s.length - 1) & ~(_PAGE - 1)
        if first != last:
            madvise(<void *>(self.base + first), <size_t>(last - first + _PAGE), MADV_WILLNEED)
            self.frame_requests += 1

    def get(self, key, bint verify, Py_ssize_t limit):
        """The payload under ``key`` in one call: probe the index, check the
        frame (and, with ``verify``, its checksum), copy, decompress.

        Returns the bytes, None if the key is absent, or ``FALLBACK`` when the
        Python path must answer: a record of more than ``limit`` stored bytes,
        one beyond the map (remap), damage of any kind (it raises the error).
        Raises as ``DiskHashIndex.get`` for a bad key or a closed index.
        """
        cdef uint64_t lo, hi
        cdef dh_slot s
        cdef int found
        cdef int64_t t0
        if self.index is None:
            raise ValueError("this MapReader was made without an index")
        if self.page is not None and self.page.page != NULL and (
                dh_load_acquire(&self.page.page.seq) != self.seen):
            return _FALLBACK
        key_to_u128(key, &lo, &hi)
        found = _probe_copy(self.index, lo, hi, &s)
        if found == SLOT_ABSENT:
            return None
        if found == SLOT_FOUND and limit >= 0:
            if self.cold:
                self._request_frame(&s)
            self._found += 1
            if self._found % COLD_SAMPLE:
                # Every line of the frame requested at once: the misses overlap
                # instead of the checksum loop meeting them one after another.
                _prefetch_frame(self.base, <uint64_t>self.size, &s)
                got = self._payload(&s, verify, <uint64_t>limit)
            else:
                t0 = _now_ns()
                _prefetch_frame(self.base, <uint64_t>self.size, &s)
                got = self._payload(&s, verify, <uint64_t>limit)
                if _now_ns() - t0 > self.cold_ns:
                    self.cold = True
                    self._fast = 0
                elif self._fast < COLD_HOLD:
                    self._fast += 1
                    if self._fast == COLD_HOLD:
                        self.cold = False
            if got is not None:
                return got
        return _FALLBACK

    def get_many(self, list keys, bint verify, Py_ssize_t limit):
        """``get`` of each of ``keys`` (a list), in one call.

        Returns ``(results, fixups)``: ``results[i]`` the payload or None
        (absent), ``fixups`` the positions the Python path must still answer
        (as ``get``'s ``FALLBACK``; their ``results`` entry is None).  The keys
        are all converted first (a bad key raises before any lookup), then
        probed under the index's read lock a chunk at a time without the GIL,
        then checked and copied, prefetching the frames a few keys ahead.
        """
        cdef Py_ssize_t i, n = len(keys)
        cdef uint64_t *kv
        if self.index is None:
            raise ValueError("this MapReader was made without an index")
        kv = <uint64_t *>PyMem_Malloc(<size_t>(2 * n + 1) * sizeof(uint64_t))
        if kv == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                # (a key's __index__ may run Python code that shrinks the list)
                if i >= PyList_GET_SIZE(keys):
                    raise RuntimeError("keys changed size during get_many")
                key_to_u128(keys[i], &kv[2 * i], &kv[2 * i + 1])
            return self._get_many(kv, n, verify, limit)
        finally:
            PyMem_Free(kv)

    def get_many_u128(self, const uint64_t[::1] lo, const uint64_t[::1] hi, bint verify,
                      Py_ssize_t limit):
        """``get_many`` of the keys ``lo[i] | hi[i] << 64`` (contiguous ``uint64`` arrays)."""
        cdef Py_ssize_t i, n = lo.shape[0]
        cdef uint64_t *kv
        if hi.shape[0] != n:
            raise ValueError(f"get_many_u128 got {n} low halves but {hi.shape[0]} high halves")
        if self.index is None:
            raise ValueError("this MapReader was made without an index")
        kv = <uint64_t *>PyMem_Malloc(<size_t>(2 * n + 1) * sizeof(uint64_t))
        if kv == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                kv[2 * i] = lo[i]
                kv[2 * i + 1] = hi[i]
            return self._get_many(kv, n, verify, limit)
        finally:
            PyMem_Free(kv)

    cdef tuple _get_many(self, const uint64_t *kv, Py_ssize_t n, bint verify, Py_ssize_t limit):
        cdef DiskHashIndex index = self.index
        cdef dh_slot *slots
        cdef uint8_t *state
        cdef Py_ssize_t i, pos = 0, end
        cdef uint64_t empty = 0
        cdef int64_t r
        cdef list out = [None] * n
        cdef list fixups = []
        slots = <dh_slot *>PyMem_Malloc(<size_t>(n + 1) * (sizeof(dh_slot) + 1))
        if slots == NULL:
            raise MemoryError()
        state = <uint8_t *>(slots + n + 1)
        try:
            while pos < n:
                end = min(pos + GET_CHUNK, n)
                index._read_acquire()
                with nogil:
                    for i in range(pos, end):
                        if i + PREFETCH_AHEAD < end:
                            DH_PREFETCH(slot_at(index._base, hash_u128(
                                kv[2 * (i + PREFETCH_AHEAD)], kv[2 * (i + PREFETCH_AHEAD) + 1],
                                index._seed) & index._mask))
                        r = probe_from(index._base, index._mask,
                                       hash_u128(kv[2 * i], kv[2 * i + 1], index._seed) & index._mask,
                                       kv[2 * i], kv[2 * i + 1], &empty)
                        if r >= 0:
                            slots[i] = slot_at(index._base, <uint64_t>r)[0]
                            state[i] = SLOT_FOUND
                        elif r == PROBE_MISS:
                            state[i] = SLOT_ABSENT
                        else:
                            state[i] = SLOT_DAMAGED
                index._read_release()
                pos = end
            for i in range(n):
                if i + PREFETCH_AHEAD < n and state[i + PREFETCH_AHEAD] == SLOT_FOUND:
                    _prefetch_frame(self.base, <uint64_t>self.size, &slots[i + PREFETCH_AHEAD])
                if state[i] == SLOT_ABSENT:
                    continue
                if state[i] == SLOT_FOUND and limit >= 0:
                    got = self._payload(&slots[i], verify, <uint64_t>limit)
                    if got is not None:
                        out[i] = got
                        continue
                fixups.append(i)
            return out, fixups
        finally:
            PyMem_Free(slots)

    def read(self, meta, bint verify):
        """The stored bytes of the record ``meta`` (a PayloadMeta), or an int error code."""
        cdef frame_t f
        cdef object edge_id
        cdef uint64_t offset, length, key_lo, key_hi
        cdef int compression
        cdef uint64_t ulen
        if not PyTuple_Check(meta) or PyTuple_GET_SIZE(meta) != 5:
            raise TypeError("meta must be a PayloadMeta")
        # Every field converted before the map is touched: the conversions may
        # run Python code (an int subclass's operators), which may release it.
        edge_id = <object>PyTuple_GET_ITEM(meta, 0)
        key_lo = PyLong_AsUnsignedLongLongMask(edge_id)
        key_hi = <uint64_t>(edge_id >> 64)
        offset = <uint64_t>(<object>PyTuple_GET_ITEM(meta, 1))
        length = <uint64_t>(<object>PyTuple_GET_ITEM(meta, 2))
        compression = <int>(<object>PyTuple_GET_ITEM(meta, 3))
        ulen = <uint64_t>(<object>PyTuple_GET_ITEM(meta, 4))
        # (offset + length could wrap past 2**64: compare without adding)
        if (offset < HEADER_SIZE + FRAME_SIZE or offset > <uint64_t>self.size
                or length > <uint64_t>self.size - offset):
            return BEYOND
        memcpy(&f, self.base + offset - FRAME_SIZE, FRAME_SIZE)
        if not frame_matches(&f, key_lo, key_hi, length, compression, ulen):
            return MISMATCH
        if verify and dh_crc32c(0, self.base + offset - FRAME_SIZE + 4,
                                <size_t>(FRAME_SIZE - 4 + length)) != f.checksum:
            return BAD_CHECKSUM
        return PyBytes_FromStringAndSize(<const char *>(self.base + offset), <Py_ssize_t>length)


# ---------------------------------------------------------------------------
# Whole-log passes of rebuild_index() and compact(): the log folded into C
# arrays, then indexed with one insert_many.

ctypedef struct log_entry:
    uint64_t lo
    uint64_t hi
    uint64_t offset             # of the payload in the file
    uint32_t length
    uint32_t uncompressed_length
    uint8_t compression
    uint8_t state               # LOG_EMPTY, LOG_PUT or LOG_DELETED

cdef enum:
    LOG_EMPTY = 0
    LOG_PUT = 1
    LOG_DELETED = 2
    LOG_MIN_SLOTS = 1024
    KEY_ROW = 16                # KEY_DTYPE: lo@0, hi@8
    META_ROW = 24               # META_DTYPE: offset@0, length@8, compression@12, uncompressed_length@16

cdef uint64_t LOG_SEED = 0x9E3779B97F4A7C15ULL


cdef enum:
    LOG_MAP_BYTES = 1 << 21     # tables from this size are mapped (huge pages where allowed)


cdef log_entry *_table_alloc(uint64_t n, size_t *mapped) noexcept nogil:
    """``n`` zeroed entries: ``calloc`` for a small table; a big one is an
    anonymous map advised to use huge pages (``*mapped`` is its length, for
    ``_table_free``): a fold's time goes mostly to the page faults of the
    fresh tables its grows make, and a huge page takes one fault for 512
    small ones (docs/performance.md, "Measurements behind the design")."""
    cdef size_t size = <size_t>n * sizeof(log_entry)
    cdef void *p
    mapped[0] = 0
    if size < LOG_MAP_BYTES:
        return <log_entry *>calloc(<size_t>n, sizeof(log_entry))
    size = (size + LOG_MAP_BYTES - 1) & ~(<size_t>LOG_MAP_BYTES - 1)
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if p == MAP_FAILED:
        return NULL
    madvise(p, size, MADV_HUGEPAGE)     # 2 MiB pages, 1/512 of the faults; best effort
    mapped[0] = size
    return <log_entry *>p


cdef void _table_free(log_entry *t, size_t mapped) noexcept nogil:
    if mapped:
        munmap(t, mapped)
    else:
        free(t)


cdef class LogFold:
    """The final state of the keys of a log, folded frame by frame in C (an
    open-addressing table in memory): each key's last put, or deleted.

    ``fold`` takes the frames of a chunk (as ``_format.frame.scan_into``); ``rows()`` gives
    the live records as ``KEY_DTYPE`` and ``META_DTYPE`` rows (bytes) for
    ``insert_many``; ``live`` counts them.
    """

    cdef log_entry *slots
    cdef size_t mapped          # the table's map length, 0 for calloc
    cdef uint64_t mask
    cdef uint64_t used
    cdef readonly uint64_t live

    def __cinit__(self):
        # No sizing up front: measured (200,000 keys), a table grown by
        # doubling folds faster than one made at its final size, its early
        # part staying in the CPU cache.
        self.slots = _table_alloc(LOG_MIN_SLOTS, &self.mapped)
        if self.slots == NULL:
            raise MemoryError()
        self.mask = LOG_MIN_SLOTS - 1

    def __dealloc__(self):
        if self.slots != NULL:
            _table_free(self.slots, self.mapped)

    cdef int _grow(self) except -1:
        cdef uint64_t n = (self.mask + 1) * 2, i, j
        cdef size_t mapped
        cdef log_entry *new = _table_alloc(n, &mapped)
        if new == NULL:
            raise MemoryError(f"no memory to fold a log of {self.used} keys")
        for i in range(self.mask + 1):
            if self.slots[i].state != LOG_EMPTY:
                j = hash_u128(self.slots[i].lo, self.slots[i].hi, LOG_SEED) & (n - 1)
                while new[j].state != LOG_EMPTY:
                    j = (j + 1) & (n - 1)
                new[j] = self.slots[i]
        _table_free(self.slots, self.mapped)
        self.slots = new
        self.mapped = mapped
        self.mask = n - 1
        return 0

    cdef int note(self, uint64_t lo, uint64_t hi, uint8_t state, uint64_t offset,
                  uint32_t length, uint8_t compression, uint32_t ulen) except -1:
        """Record a put (``LOG_PUT``) or a tombstone (``LOG_DELETED``) of the key."""
        cdef uint64_t i
        cdef log_entry *e
        if (self.used + 1) * 4 > (self.mask + 1) * 3:
            self._grow()
        i = hash_u128(lo, hi, LOG_SEED) & self.mask
        while True:
            e = &self.slots[i]
            if e.state == LOG_EMPTY:
                if state == LOG_DELETED:
                    return 0            # never put: nothing to forget
                self.used += 1
                e.lo = lo
                e.hi = hi
                break
            if e.lo == lo and e.hi == hi:
                break
            i = (i + 1) & self.mask
        if e.state == LOG_PUT:
            self.live -= 1
        e.state = state
        if state == LOG_PUT:
            self.live += 1
            e.offset = offset
            e.length = length
            e.compression = compression
            e.uncompressed_length = ulen
        return 0

    def fold(self, data, Py_ssize_t p, long long base):
        """Fold the valid frames of ``data[p:]`` (``data`` starts at file offset
        ``base``); returns where the first frame that is not valid (or not
        whole) starts.  The checks are ``frame_end``'s."""
        cdef Py_buffer view
        cdef frame_t f
        cdef const uint8_t *b
        cdef Py_ssize_t n, end
        if p < 0:
            raise ValueError(f"start offset must be >= 0, not {p}")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            b = <const uint8_t *>view.buf
            n = view.len
            while p + FRAME_SIZE <= n:
                end = frame_end(b, p, n, &f)
                if end < 0:
                    break
                self.note(f.key_lo, f.key_hi, LOG_PUT if f.kind == KIND_PUT else LOG_DELETED,
                          <uint64_t>(base + p + FRAME_SIZE), f.stored_length, f.compression,
                          f.uncompressed_length)
                p = end
            return p
        finally:
            PyBuffer_Release(&view)

    def rows(self):
        """``(key_rows, meta_rows)``: the live records as ``KEY_DTYPE`` and
        ``META_DTYPE`` rows (bytes, ``live`` rows each), in table order."""
        cdef uint64_t i, k = 0
        cdef log_entry *e
        cdef uint8_t *kr
        cdef uint8_t *mr
        key_rows = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(self.live * KEY_ROW))
        meta_rows = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(self.live * META_ROW))
        kr = <uint8_t *>PyBytes_AS_STRING(key_rows)
        mr = <uint8_t *>PyBytes_AS_STRING(meta_rows)
        memset(mr, 0, <size_t>(self.live * META_ROW))
        for i in range(self.mask + 1):
            e = &self.slots[i]
            if e.state != LOG_PUT:
                continue
            if k == self.live:          # cannot happen: live counts the LOG_PUT entries
                raise AssertionError("LogFold: more live entries than counted")
            memcpy(kr + k * KEY_ROW, &e.lo, 8)
            memcpy(kr + k * KEY_ROW + 8, &e.hi, 8)
            memcpy(mr + k * META_ROW, &e.offset, 8)
            memcpy(mr + k * META_ROW + 8, &e.length, 4)
            mr[k * META_ROW + 12] = e.compression
            memcpy(mr + k * META_ROW + 16, &e.uncompressed_length, 4)
            k += 1
        return key_rows, meta_rows


cdef class RowLog:
    """Records in the order they are added, as ``KEY_DTYPE`` and ``META_DTYPE``
    rows for one ``insert_many`` (which lets a later duplicate win): what
    compaction's copy needs, since it adds each live record once, in log
    order.  Unlike a ``LogFold`` there is no table to probe or grow: rows
    are appended (the arrays doubled as needed), so no grow faults in fresh
    memory (docs/performance.md, "Measurements behind the design").
    ``live`` counts the rows.
    """

    cdef uint8_t *keys
    cdef uint8_t *metas
    cdef uint64_t cap
    cdef readonly uint64_t live

    def __dealloc__(self):
        free(self.keys)
        free(self.metas)

    cdef int add(self, uint64_t lo, uint64_t hi, uint64_t offset, uint32_t length,
                 uint8_t compression, uint32_t ulen) except -1:
        cdef uint64_t n
        cdef uint8_t *k
        cdef uint8_t *m
        cdef uint8_t *row
        if self.live == self.cap:
            n = self.cap * 2 if self.cap else LOG_MIN_SLOTS
            k = <uint8_t *>realloc(self.keys, <size_t>(n * KEY_ROW))
            if k == NULL:
                raise MemoryError(f"no memory for {n} rows")
            self.keys = k
            m = <uint8_t *>realloc(self.metas, <size_t>(n * META_ROW))
            if m == NULL:
                raise MemoryError(f"no memory for {n} rows")
            self.metas = m
            self.cap = n
        row = self.keys + self.live * KEY_ROW
        memcpy(row, &lo, 8)
        memcpy(row + 8, &hi, 8)
        row = self.metas + self.live * META_ROW
        memset(row, 0, META_ROW)
        memcpy(row, &offset, 8)
        memcpy(row + 8, &length, 4)
        row[12] = compression
        memcpy(row + 16, &ulen, 4)
        self.live += 1
        return 0

    def rows(self):
        """``(key_rows, meta_rows)``: the rows added, in order, as bytes."""
        if not self.live:
            return b"", b""
        return (PyBytes_FromStringAndSize(<const char *>self.keys, <Py_ssize_t>(self.live * KEY_ROW)),
                PyBytes_FromStringAndSize(<const char *>self.metas, <Py_ssize_t>(self.live * META_ROW)))


def copy_live_into(data, Py_ssize_t p, long long base, DiskHashIndex index not None,
                   bytearray out not None, Py_ssize_t used, RowLog live not None,
                   long long new_base):
    """Compaction's copy step over ``data[p:]`` (at file offset ``base``), in C:
    each valid put frame that ``index`` still points at is appended to
    ``out[used:]`` (grown as needed) and recorded in ``live`` at its new place
    (``new_base`` onwards).  The index is probed as ``DiskHashIndex.get`` does
    (its read lock; writers go on meanwhile).  Returns ``(stop, used,
    new_base)``; frames checked by ``frame_end``.
    """
    cdef Py_buffer view
    cdef frame_t f
    cdef dh_slot s
    cdef const uint8_t *b
    cdef Py_ssize_t n, end, size, cap
    if p < 0 or used < 0 or used > PyByteArray_GET_SIZE(out):
        raise ValueError(f"bad start ({p}) or fill ({used}) of the copy")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        b = <const uint8_t *>view.buf
        n = view.len
        while p + FRAME_SIZE <= n:
            end = frame_end(b, p, n, &f)
            if end < 0:
                break
            if (f.kind == KIND_PUT and _probe_copy(index, f.key_lo, f.key_hi, &s) == SLOT_FOUND
                    and s.offset == <uint64_t>(base + p + FRAME_SIZE)):
                size = end - p
                cap = PyByteArray_GET_SIZE(out)
                if used + size > cap:
                    PyByteArray_Resize(out, max(used + size, 2 * cap))
                memcpy(PyByteArray_AS_STRING(out) + used, b + p, <size_t>size)
                used += size
                live.add(f.key_lo, f.key_hi, <uint64_t>(new_base + FRAME_SIZE),
                         f.stored_length, f.compression, f.uncompressed_length)
                new_base += size
            p = end
        return p, used, new_base
    finally:
        PyBuffer_Release(&view)


def live_keys(data, Py_ssize_t p, long long base, DiskHashIndex index not None,
              RowLog live not None, uint64_t max_rows, uint64_t max_bytes, bint raw):
    """The export's walk over ``data[p:]`` (at file offset ``base``), in C:
    each valid put frame that ``index`` points at is added to ``live``, in
    log order, until it holds ``max_rows`` rows or about ``max_bytes`` of
    payload (stored bytes with ``raw``, else uncompressed).  Returns
    ``(stop, full)``: where it stopped, and whether a limit stopped it (else
    a frame that does not check out, ``frame_end``).  Probes as ``get`` does;
    the log's order streams a store bigger than memory from sequential reads."""
    cdef Py_buffer view
    cdef frame_t f
    cdef dh_slot s
    cdef const uint8_t *b
    cdef Py_ssize_t n, end
    cdef uint64_t size = 0
    if p < 0:
        raise ValueError(f"bad start ({p}) of the walk")
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        b = <const uint8_t *>view.buf
        n = view.len
        while p + FRAME_SIZE <= n:
            if live.live >= max_rows or size >= max_bytes:
                return p, True
            end = frame_end(b, p, n, &f)
            if end < 0:
                break
            if (f.kind == KIND_PUT and _probe_copy(index, f.key_lo, f.key_hi, &s) == SLOT_FOUND
                    and s.offset == <uint64_t>(base + p + FRAME_SIZE)):
                live.add(f.key_lo, f.key_hi, s.offset, f.stored_length, f.compression,
                         f.uncompressed_length)
                size += f.stored_length if raw else f.uncompressed_length
            p = end
        return p, live.live >= max_rows or size >= max_bytes
    finally:
        PyBuffer_Release(&view)
