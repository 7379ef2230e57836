# cython: language_level=3
"""The SOCHIDX2 hash, exposed to Python for tools and tests.

The compiled index uses the inline versions in ``_format.pxd``; this module
only lets Python check them against the spec's test vectors.
"""
from libc.stdint cimport uint64_t

HEADER_SIZE_BYTES = HEADER_SIZE
SLOT_SIZE_BYTES = SLOT_SIZE
MIN_NUM_SLOTS = MIN_SLOTS
VERSION = FORMAT_VERSION
MAGIC = b"SOCHIDX2"


def hash_key(key, seed):
    """``hash(key, seed)`` of the spec, for a key in [0, 2**128)."""
    key = int(key)
    if not 0 <= key < 2**128:
        raise OverflowError(f"key {key} is outside [0, 2**128)")
    cdef uint64_t lo = key & 0xFFFFFFFFFFFFFFFF
    cdef uint64_t hi = key >> 64
    cdef uint64_t s = seed
    return hash_u128(lo, hi, s)


def home_slot(key, seed, num_slots):
    """The slot a lookup of ``key`` starts at in a table of ``num_slots``."""
    return hash_key(key, seed) & (num_slots - 1)
