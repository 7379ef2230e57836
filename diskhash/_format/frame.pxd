# The payload log's frame (docs/internals/store-format.md), declared once for the
# compiled store modules (_store/read.pyx, _store/write.pyx); _format/payload.py is
# the Python side, and the tests check the two write identical bytes.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from diskhash._format.sochidx2 cimport MAX_COMPRESSION

cdef extern from "crc32c.h":
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
