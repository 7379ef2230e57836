# cython: language_level=3, binding=False, boundscheck=False, wraparound=False
"""The Arrow batch read: payloads of many keys into one data buffer and one offsets buffer.

``fill_many(index, mapping, keys, verify, raw, alloc)`` is ``get_many`` for
``diskhash._store.arrow``: the keys (``KEY_DTYPE`` rows, 16 bytes each) are
probed under the index's read lock a chunk at a time, as ``MapReader`` does
(``_store/read.pyx``); the sizes give the offsets; ``alloc(nbytes)`` (the
caller's: Arrow's allocator) makes the result buffers; then one loop
without the GIL checks each frame against its slot (and its CRC-32C with
``verify``) and copies the payload -- or decodes an LZ4/ZSTD one -- straight
into its place in the data buffer.  Nothing per record is a Python object.

The codecs are the system's ``liblz4``/``libzstd`` (loaded with ``dlopen``:
the Python packages export no C entry points).  Without them, and for every
record that does not check out (beyond the map, damaged, not decodable), the
record is a *fixup*: its place is reserved and the Python side
(``_store/arrow.py``) reads it through the store's reader, which remaps or
raises the store's own errors.

The map is held (a buffer export) for the whole call: a ``close()`` racing
it cannot unmap the pages under the loop (``Generation.release`` lets the
map go with its last export).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlopen, dlsym

from diskhash._format.frame cimport (
    FRAME_SIZE,
    HEADER_SIZE,
    dh_crc32c,
    dh_crc32c_init,
    frame_matches,
    frame_t,
    prefetch_frame,
)
from diskhash._format.sochidx2 cimport (
    DH_PREFETCH,
    MAX_COMPRESSION,
    PROBE_MISS,
    dh_slot,
    hash_u128,
    probe_from,
    slot_at,
)
from diskhash._index.table cimport DiskHashIndex

cdef extern from *:
    """
    #include "crc32c.h"
    /* The checksums of uncompressed frames computed while their payloads are
     * copied, three frames at once.  The crc32 instruction has a latency of
     * three cycles and a throughput of one: one frame is a chain that waits
     * on itself (crc32c.h splits a long buffer into three streams, but a 1 KiB
     * payload leaves a long single-stream tail), three frames are three
     * independent chains with nothing to join.  Each 8-byte word is loaded
     * once, for the checksum and the copy: no second pass over the payload.
     * frame[k] is a frame header (the checksum covers its bytes 4..32 and the
     * payload after it), len[k] its payload length, dst[k] where the payload
     * goes; sums[k] gets the checksum to compare with the header's.
     *
     * With stream set (a big result), whole words go to 8-byte-aligned
     * destinations with non-temporal stores: a normal store first reads the
     * result's cache line from memory (the result is fresh memory, larger
     * than the caches), then writes it back; a streaming store only writes.
     * dh_store_fence() after the last of them orders them before the result
     * is handed to another thread. */
    #if defined(__x86_64__) && defined(__GNUC__)
    __attribute__((target("sse4.2")))
    static uint64_t dh_crc_copy_tail(uint64_t c, const unsigned char *s, unsigned char *d, uint64_t n)
    {
        uint64_t w;
        uint64_t j = 0;
        for (; j + 8 <= n; j += 8) {
            memcpy(&w, s + j, 8);
            c = __builtin_ia32_crc32di(c, w);
            memcpy(d + j, &w, 8);
        }
        for (; j < n; j++) {
            c = __builtin_ia32_crc32qi((uint32_t)c, s[j]);
            d[j] = s[j];
        }
        return c;
    }

    __attribute__((target("sse4.2")))
    static uint64_t dh_crc_header(const unsigned char *f)
    {
        uint64_t c = 0xFFFFFFFFu, w;
        uint32_t h;
        memcpy(&w, f + 4, 8);
        c = __builtin_ia32_crc32di(c, w);
        memcpy(&w, f + 12, 8);
        c = __builtin_ia32_crc32di(c, w);
        memcpy(&w, f + 20, 8);
        c = __builtin_ia32_crc32di(c, w);
        memcpy(&h, f + 28, 4);
        return __builtin_ia32_crc32si((uint32_t)c, h);
    }

    #define DH_STORE8(p, w) memcpy((p), &(w), 8)
    #define DH_STREAM8(p, w) __builtin_ia32_movnti64((long long *)(p), (long long)(w))
    #define DH_COPY3(STORE) \
        for (j = 0; j < m; j += 8) { \
            memcpy(&wa, pa + j, 8); \
            memcpy(&wb, pb + j, 8); \
            memcpy(&wc, pc + j, 8); \
            a = __builtin_ia32_crc32di(a, wa); \
            b = __builtin_ia32_crc32di(b, wb); \
            c = __builtin_ia32_crc32di(c, wc); \
            STORE(da + j, wa); \
            STORE(db + j, wb); \
            STORE(dc + j, wc); \
        }

    static void dh_store_fence(void)
    {
        __builtin_ia32_sfence();
    }

    __attribute__((target("sse4.2")))
    static void dh_crc_copy3_hw(const unsigned char *const *frame, unsigned char *const *dst,
                                const uint64_t *len, uint32_t *sums, int stream)
    {
        const unsigned char *pa = frame[0] + 32, *pb = frame[1] + 32, *pc = frame[2] + 32;
        unsigned char *da = dst[0], *db = dst[1], *dc = dst[2];
        uint64_t a = dh_crc_header(frame[0]), b = dh_crc_header(frame[1]), c = dh_crc_header(frame[2]);
        uint64_t m = len[0] < len[1] ? len[0] : len[1], j, wa, wb, wc;
        if (len[2] < m)
            m = len[2];
        m &= ~(uint64_t)7;
        if (stream && (((uintptr_t)da | (uintptr_t)db | (uintptr_t)dc) & 7) == 0) {
            DH_COPY3(DH_STREAM8)
        } else {
            DH_COPY3(DH_STORE8)
        }
        sums[0] = ~(uint32_t)dh_crc_copy_tail(a, pa + m, da + m, len[0] - m);
        sums[1] = ~(uint32_t)dh_crc_copy_tail(b, pb + m, db + m, len[1] - m);
        sums[2] = ~(uint32_t)dh_crc_copy_tail(c, pc + m, dc + m, len[2] - m);
    }
    #else
    static void dh_store_fence(void)
    {
    }
    #endif

    /* k (1 to 3) frames checked and copied; without the crc32 instruction
     * (or for one frame) the checksum and the copy one after the other. */
    static void dh_crc_copy(int k, const unsigned char *const *frame, unsigned char *const *dst,
                            const uint64_t *len, uint32_t *sums, int stream)
    {
        int i;
    #if defined(__x86_64__) && defined(__GNUC__)
        if (dh_crc32c_have_hw && k == 3) {
            dh_crc_copy3_hw(frame, dst, len, sums, stream);
            return;
        }
    #endif
        for (i = 0; i < k; i++) {
            sums[i] = dh_crc32c(0, frame[i] + 4, (size_t)(28 + len[i]));
            if (len[i])
                memcpy(dst[i], frame[i] + 32, (size_t)len[i]);
        }
    }
    """
    void dh_crc_copy(int k, const uint8_t **frame, uint8_t **dst, const uint64_t *length,
                     uint32_t *sums, int stream) nogil
    void dh_store_fence() nogil

dh_crc32c_init()

ctypedef int (*lz4_decompress_t)(const char *src, char *dst, int src_size, int dst_capacity) noexcept nogil
ctypedef size_t (*zstd_decompress_t)(void *dst, size_t dst_capacity, const void *src,
                                     size_t src_size) noexcept nogil
ctypedef unsigned int (*zstd_is_error_t)(size_t code) noexcept nogil

cdef lz4_decompress_t _lz4 = NULL
cdef zstd_decompress_t _zstd = NULL
cdef zstd_is_error_t _zstd_is_error = NULL
cdef lz4_decompress_t _lz4_loaded = NULL
cdef zstd_decompress_t _zstd_loaded = NULL


cdef void *_symbol(const char **names, const char *symbol) noexcept:
    """``symbol`` of the first of ``names`` (NULL-terminated) that loads, or NULL."""
    cdef void *lib
    cdef void *fn
    cdef int i = 0
    while names[i] != NULL:
        lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL)
        if lib != NULL:
            fn = dlsym(lib, symbol)
            if fn != NULL:
                return fn
        i += 1
    return NULL


cdef const char *_LZ4_NAMES[3]
_LZ4_NAMES[0] = b"liblz4.so.1"
_LZ4_NAMES[1] = b"liblz4.so"
_LZ4_NAMES[2] = NULL
cdef const char *_ZSTD_NAMES[3]
_ZSTD_NAMES[0] = b"libzstd.so.1"
_ZSTD_NAMES[1] = b"libzstd.so"
_ZSTD_NAMES[2] = NULL

_lz4_loaded = <lz4_decompress_t>_symbol(_LZ4_NAMES, b"LZ4_decompress_safe")
_zstd_loaded = <zstd_decompress_t>_symbol(_ZSTD_NAMES, b"ZSTD_decompress")
_zstd_is_error = <zstd_is_error_t>_symbol(_ZSTD_NAMES, b"ZSTD_isError")
if _zstd_is_error == NULL:
    _zstd_loaded = NULL
_lz4 = _lz4_loaded
_zstd = _zstd_loaded


def c_codecs():
    """``(lz4, zstd)``: whether each codec is decoded in C here (the system's library loaded)."""
    return _lz4 != NULL, _zstd != NULL


def use_c_codecs(bint lz4, bint zstd):
    """Decode in C where the library loaded (True) or always through the
    Python path (False): the tests' switch for the fallback."""
    global _lz4, _zstd
    _lz4 = _lz4_loaded if lz4 else NULL
    _zstd = _zstd_loaded if zstd else NULL


cdef enum:
    ABSENT = 0
    FOUND = 1
    DAMAGED = 2         # a bad tag or a full table: the index's own get raises
    FIXUP = 3           # found, but the Python path must read it
    DONE = 4
    CHUNK = 4096        # keys probed per shared hold of the index's map lock
    AHEAD = 8           # the slot / frame this many keys ahead is prefetched
    PREFETCH_BYTES = 4096
    STREAM_BYTES = 4 << 20  # results from this size on are written with streaming stores


cdef inline void _prefetch(const uint8_t *base, uint64_t size, const dh_slot *s) noexcept nogil:
    prefetch_frame(base, size, s.offset, s.length, PREFETCH_BYTES)


cdef inline bint _frame_ok(const uint8_t *base, uint64_t size, const dh_slot *s) noexcept nogil:
    """Whether the frame of slot copy ``s`` lies within the map and its header
    is the record the slot points at."""
    cdef frame_t f
    if (s.offset < HEADER_SIZE + FRAME_SIZE or s.offset > size or s.length > size - s.offset):
        return False
    memcpy(&f, base + s.offset - FRAME_SIZE, FRAME_SIZE)
    return frame_matches(&f, s.key_lo, s.key_hi, s.length, s.compression, s.uncompressed_length)


cdef inline void _check_copy(const uint8_t *base, const dh_slot *slots, uint8_t *state, const int64_t *offs,
                             uint8_t *data, const Py_ssize_t *queue, int k, bint stream) noexcept nogil:
    """The ``k`` (1 to 3) queued records, whose frames ``_frame_ok`` passed
    and whose stored bytes are the result's, checksummed while copied to
    their places (with streaming stores if ``stream``): DONE, or FIXUP for a
    checksum that does not match (the Python path then reads the record
    again and raises the store's error)."""
    cdef const uint8_t *frame[3]
    cdef uint8_t *dst[3]
    cdef uint64_t length[3]
    cdef uint32_t sums[3]
    cdef uint32_t want
    cdef int j
    for j in range(k):
        frame[j] = base + slots[queue[j]].offset - FRAME_SIZE
        dst[j] = data + offs[queue[j]]
        length[j] = slots[queue[j]].length
    dh_crc_copy(k, frame, dst, length, sums, stream)
    for j in range(k):
        memcpy(&want, frame[j], 4)
        state[queue[j]] = DONE if sums[j] == want else FIXUP


cdef inline int _copy(const uint8_t *base, uint64_t size, const dh_slot *s, bint verify, bint raw,
                      uint8_t *dst) noexcept nogil:
    """The payload of slot copy ``s`` checked and copied (decoded unless
    ``raw``) to ``dst``: DONE, or FIXUP when the Python path must take it."""
    cdef frame_t f
    cdef uint64_t offset = s.offset, length = s.length, ulen = s.uncompressed_length
    cdef const uint8_t *p
    cdef size_t got
    if not _frame_ok(base, size, s):
        return FIXUP
    p = base + offset - FRAME_SIZE
    memcpy(&f, p, FRAME_SIZE)
    if verify and dh_crc32c(0, p + 4, <size_t>(FRAME_SIZE - 4 + length)) != f.checksum:
        return FIXUP
    if raw or s.compression == 0:
        if length:
            memcpy(dst, p + FRAME_SIZE, <size_t>length)
        return DONE
    if s.compression == 1:
        if _lz4 == NULL or length > 0x7FFFFFFF or ulen > 0x7FFFFFFF:
            return FIXUP
        if _lz4(<const char *>(p + FRAME_SIZE), <char *>dst, <int>length, <int>ulen) != <int>ulen:
            return FIXUP
        return DONE
    if _zstd == NULL:
        return FIXUP
    got = _zstd(dst, <size_t>ulen, p + FRAME_SIZE, <size_t>length)
    if _zstd_is_error(got) or got != ulen:
        return FIXUP
    return DONE


cdef class _Held:
    """A writable buffer export, let go when this object is."""
    cdef Py_buffer view
    cdef bint held

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)


cdef _Held _writable(obj, Py_ssize_t need):
    cdef _Held h = _Held()
    PyObject_GetBuffer(obj, &h.view, PyBUF_WRITABLE)
    h.held = True
    if h.view.len < need:
        raise ValueError(f"alloc() gave {h.view.len} bytes, not the {need} asked for")
    return h


def fill_many(DiskHashIndex index not None, mapping, keys, bint verify, bint raw, alloc):
    """The payloads of ``keys`` (a buffer of ``KEY_DTYPE`` rows) as Arrow buffers.

    ``mapping``: a map of the data file (its buffer held for the call);
    ``alloc(nbytes)``: a new writable buffer of at least ``nbytes``.  With
    ``raw`` the stored bytes are copied as they are (compressed or not).

    Returns ``(offsets, data, validity, nulls, fixups, codecs, lengths)``:
    ``offsets`` (n + 1 int64) and ``data`` as ``alloc`` made them,
    ``validity`` a bitmap (1: present), ``nulls`` the absent keys counted,
    ``fixups`` a list of ``(i, offset, length, compression,
    uncompressed_length)`` for the records the Python path must still read
    into their place (``offset`` None: the probe met a damaged slot), and,
    with ``raw``, ``codecs`` (uint8 per key) and ``lengths`` (uint32: the
    uncompressed lengths), else None twice.
    """
    cdef Py_buffer kview, mview
    cdef Py_ssize_t n, i, pos, end, nulls = 0
    cdef uint64_t lo, hi, empty = 0, total = 0, msize
    cdef int64_t r
    cdef dh_slot *slots = NULL
    cdef uint8_t *state = NULL
    cdef const uint8_t *kb
    cdef const uint8_t *base
    cdef int64_t *offs
    cdef uint8_t *data
    cdef uint8_t *valid
    cdef uint8_t *codec = NULL
    cdef uint32_t *ulens = NULL
    cdef uint32_t u
    cdef Py_ssize_t queue[3]
    cdef int queued = 0
    cdef bint stream
    cdef _Held ho, hd, hv, hc, hl
    PyObject_GetBuffer(keys, &kview, PyBUF_SIMPLE)
    try:
        if kview.len % 16:
            raise ValueError(f"keys are {kview.len} bytes, not whole 16-byte rows")
        n = kview.len // 16
        kb = <const uint8_t *>kview.buf
        slots = <dh_slot *>malloc(<size_t>(n + 1) * sizeof(dh_slot))
        state = <uint8_t *>malloc(<size_t>(n + 1))
        if slots == NULL or state == NULL:
            raise MemoryError()
        pos = 0
        while pos < n:
            end = min(pos + CHUNK, n)
            index._read_acquire()
            with nogil:
                for i in range(pos, end):
                    if i + AHEAD < end:
                        memcpy(&lo, kb + 16 * (i + AHEAD), 8)
                        memcpy(&hi, kb + 16 * (i + AHEAD) + 8, 8)
                        DH_PREFETCH(slot_at(index._base, hash_u128(lo, hi, index._seed) & index._mask))
                    memcpy(&lo, kb + 16 * i, 8)
                    memcpy(&hi, kb + 16 * i + 8, 8)
                    r = probe_from(index._base, index._mask, hash_u128(lo, hi, index._seed) & index._mask,
                                   lo, hi, &empty)
                    if r >= 0:
                        slots[i] = slot_at(index._base, <uint64_t>r)[0]
                        state[i] = FOUND if slots[i].compression <= MAX_COMPRESSION else FIXUP
                    elif r == PROBE_MISS:
                        state[i] = ABSENT
                    else:
                        state[i] = DAMAGED
            index._read_release()
            pos = end
    finally:
        PyBuffer_Release(&kview)
    try:
        offsets = alloc((n + 1) * 8)
        ho = _writable(offsets, (n + 1) * 8)
        offs = <int64_t *>ho.view.buf
        for i in range(n):
            offs[i] = <int64_t>total
            if state[i] == FOUND or state[i] == FIXUP:
                total += slots[i].length if raw else slots[i].uncompressed_length
            else:
                nulls += state[i] == ABSENT
        offs[n] = <int64_t>total
        payloads = alloc(<Py_ssize_t>total)
        hd = _writable(payloads, <Py_ssize_t>total)
        data = <uint8_t *>hd.view.buf
        validity = alloc((n + 7) // 8)
        hv = _writable(validity, (n + 7) // 8)
        valid = <uint8_t *>hv.view.buf
        memset(valid, 0, <size_t>((n + 7) // 8))
        codecs = lengths = None
        if raw:
            codecs = alloc(n)
            lengths = alloc(4 * n)
            hc = _writable(codecs, n)
            hl = _writable(lengths, 4 * n)
            codec = <uint8_t *>hc.view.buf
            ulens = <uint32_t *>hl.view.buf
        stream = total >= STREAM_BYTES
        PyObject_GetBuffer(mapping, &mview, PyBUF_SIMPLE)
        try:
            base = <const uint8_t *>mview.buf
            msize = <uint64_t>mview.len
            with nogil:
                for i in range(n):
                    if i + AHEAD < n and state[i + AHEAD] == FOUND:
                        _prefetch(base, msize, &slots[i + AHEAD])
                    if state[i] != ABSENT:
                        valid[i >> 3] |= <uint8_t>(1 << (i & 7))
                    if raw:
                        codec[i] = slots[i].compression if state[i] != ABSENT and state[i] != DAMAGED else 0
                        u = slots[i].uncompressed_length if state[i] != ABSENT and state[i] != DAMAGED else 0
                        memcpy(&ulens[i], &u, 4)
                    if state[i] != FOUND:
                        continue
                    if verify and (raw or slots[i].compression == 0):
                        if not _frame_ok(base, msize, &slots[i]):
                            state[i] = FIXUP
                            continue
                        queue[queued] = i
                        queued += 1
                        if queued == 3:
                            _check_copy(base, slots, state, offs, data, queue, 3, stream)
                            queued = 0
                    else:
                        state[i] = _copy(base, msize, &slots[i], verify, raw, data + offs[i])
                if queued:
                    _check_copy(base, slots, state, offs, data, queue, queued, stream)
                if stream:
                    dh_store_fence()
        finally:
            PyBuffer_Release(&mview)
        fixups = []
        for i in range(n):
            if state[i] == FIXUP:
                fixups.append((i, slots[i].offset, slots[i].length, slots[i].compression,
                               slots[i].uncompressed_length))
            elif state[i] == DAMAGED:
                fixups.append((i, None, 0, 0, 0))
        return offsets, payloads, validity, nulls, fixups, codecs, lengths
    finally:
        free(slots)
        free(state)
