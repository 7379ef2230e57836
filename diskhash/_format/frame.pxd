# The payload log's frame (docs/internals/store-format.md), declared once for the
# compiled modules: _format/frame.pyx (the checksum and the frame scan, for
# Python), _store/read.pyx and _store/write.pyx cimport it.  _format/payload.py is
# the Python side, and the tests check the two write identical bytes.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from diskhash._format.sochidx2 cimport DH_PREFETCH, MAX_COMPRESSION

cdef extern from "crc32c.h":
    # Static tables in each module that includes it: call dh_crc32c_init() at import.
    void dh_crc32c_init()
    uint32_t dh_crc32c(uint32_t crc, const void *data, size_t n) nogil
    uint32_t dh_crc32c_soft(uint32_t crc, const unsigned char *p, size_t n) nogil

cdef enum:
    FRAME_SIZE = 32         # the header before each payload
    HEADER_SIZE = 64        # the data file's own header: no frame starts before it
    FRAME_MARK = 0xD5A7
    KIND_PUT = 1            # a frame's kind: a put
    KIND_TOMBSTONE = 2      # or a tombstone

cdef packed struct frame_t:
    uint32_t checksum       # CRC-32C over the rest of the header and the payload
    uint8_t kind
    uint8_t compression
    uint16_t mark
    uint32_t stored_length
    uint32_t uncompressed_length
    uint64_t key_lo
    uint64_t key_hi


cdef inline bint frame_matches(const frame_t *f, uint64_t key_lo, uint64_t key_hi, uint64_t length,
                               unsigned int compression, uint64_t ulen) noexcept nogil:
    """Whether the frame header ``f`` is the record an index entry points at: a
    put of that key, lengths and codec (the Python twin: payload.frame_matches)."""
    return (f.kind == KIND_PUT and f.mark == FRAME_MARK and f.stored_length == length
            and f.compression == compression and compression <= MAX_COMPRESSION
            and f.uncompressed_length == ulen and f.key_lo == key_lo and f.key_hi == key_hi)


cdef inline Py_ssize_t frame_end(const uint8_t *b, Py_ssize_t p, Py_ssize_t n, frame_t *f) noexcept nogil:
    """Where the whole, valid frame at ``b + p`` ends (its header copied to
    ``f``), or -1: a bad mark, kind or compression byte, lengths that do not
    fit the kind, a frame running past ``n``, or a checksum mismatch.  The
    checks of every log pass (the Python twin: payload.frame_at); the
    caller makes sure ``p + FRAME_SIZE <= n``."""
    cdef Py_ssize_t end
    memcpy(f, b + p, FRAME_SIZE)
    if f.mark != FRAME_MARK or f.compression > MAX_COMPRESSION:
        return -1
    if f.kind == KIND_PUT:
        if ((f.compression == 0 and f.uncompressed_length != f.stored_length)
                or (f.compression != 0 and (f.stored_length == 0 or f.uncompressed_length == 0))):
            return -1
    elif f.kind == KIND_TOMBSTONE:
        if f.stored_length or f.uncompressed_length or f.compression:
            return -1
    else:
        return -1
    end = p + FRAME_SIZE + <Py_ssize_t>f.stored_length
    if end > n:
        return -1
    if dh_crc32c(0, b + p + 4, <size_t>(FRAME_SIZE - 4 + f.stored_length)) != f.checksum:
        return -1
    return end


cdef inline object frame_key(const frame_t *f):
    """The frame's edge id as a Python int (small ids skip the 128-bit join)."""
    if f.key_hi:
        return (<object>f.key_hi << 64) | <object>f.key_lo
    return <object>f.key_lo


cdef inline void prefetch_frame(const uint8_t *base, uint64_t size, uint64_t offset, uint64_t length,
                                uint64_t max_bytes) noexcept nogil:
    """Ask for the cache lines of the frame whose payload is at ``offset``
    (``length`` bytes) in a map of ``size`` bytes at ``base``: its header and
    up to ``max_bytes`` of the payload; nothing for an offset outside the map."""
    cdef uint64_t p, end
    if offset < HEADER_SIZE + FRAME_SIZE or offset > size:
        return
    p = offset - FRAME_SIZE
    end = offset + (length if length < max_bytes else max_bytes)
    if end > size:
        end = size
    while p < end:
        DH_PREFETCH(base + p)
        p += 64
