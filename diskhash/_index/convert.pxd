# Argument conversion at the Python boundary: done once, before any lock, so
# the nogil loops see only C integers.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

ctypedef struct meta_fields:
    uint64_t offset
    uint32_t length
    uint32_t uncompressed_length
    uint8_t compression

cdef int key_to_u128(object key, uint64_t *lo, uint64_t *hi) except -1
cdef object u128_to_int(uint64_t lo, uint64_t hi)
cdef int meta_from_object(object meta, uint64_t lo, uint64_t hi, object key,
                          meta_fields *out) except -1
cdef object make_record(object edge_id, uint8_t compression, uint64_t offset,
                        uint32_t length, uint32_t uncompressed_length)
cdef object compression_member(uint8_t value)
