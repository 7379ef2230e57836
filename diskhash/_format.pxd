# The SOCHIDX2 layout and hash (../shared/SPEC-sochidx2.md), as inline C.
# Everything here is nogil and allocation-free: the probe loops cimport it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from *:
    """
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #error "diskhash maps SOCHIDX2 (little-endian) directly and needs a little-endian CPU"
    #endif
    typedef struct {
        uint8_t  tag;                  /* 0 empty, 1 occupied */
        uint8_t  compression;          /* 0 none, 1 LZ4, 2 ZSTD */
        uint16_t reserved0;
        uint32_t length;
        uint32_t uncompressed_length;
        uint32_t reserved1;
        uint64_t key_lo;
        uint64_t key_hi;
        uint64_t offset;
    } dh_slot;
    typedef char dh_slot_is_40_bytes[(sizeof(dh_slot) == 40) ? 1 : -1];
    /* The writer's undo record (a page of the sidecar .lock file): while
       `armed` holds DH_UNDO_ARMED, slot `slot` of a `num_slots` table may be
       half overwritten and `old` is what it held before. */
    typedef struct {
        uint64_t armed;
        uint64_t slot;
        uint64_t num_slots;
        dh_slot old;
    } dh_undo;
    typedef char dh_undo_fits[(sizeof(dh_undo) <= 64) ? 1 : -1];
    #define DH_UNDO_ARMED 0x444e55484b534944ULL   /* "DISKHUND" */
    /* The largest table: 2**56 slots (a 2.9 EB file), so that slot counts,
       byte sizes and a grow's doubling stay far from overflowing 64 bits. */
    #define DH_MAX_SLOTS (1ULL << 56)
    #define DH_COMPILER_BARRIER() __atomic_signal_fence(__ATOMIC_SEQ_CST)
    #if defined(__GNUC__)
    #define DH_PREFETCH(p) __builtin_prefetch((p), 0, 1)
    #else
    #define DH_PREFETCH(p) ((void)0)
    #endif
    """
    ctypedef struct dh_slot:
        uint8_t tag
        uint8_t compression
        uint16_t reserved0
        uint32_t length
        uint32_t uncompressed_length
        uint32_t reserved1
        uint64_t key_lo
        uint64_t key_hi
        uint64_t offset
    ctypedef struct dh_undo:
        uint64_t armed
        uint64_t slot
        uint64_t num_slots
        dh_slot old
    uint64_t DH_UNDO_ARMED
    uint64_t DH_MAX_SLOTS
    void DH_COMPILER_BARRIER() nogil
    void DH_PREFETCH(const void *p) nogil

# Header (64 bytes) and slot geometry.
cdef enum:
    HEADER_SIZE = 64
    SLOT_SIZE = 40
    FORMAT_VERSION = 1
    MIN_SLOTS = 4096
    OFF_VERSION = 8
    OFF_NUM_SLOTS = 16
    OFF_NUM_ENTRIES = 24
    OFF_SEED = 32
    TAG_EMPTY = 0
    TAG_OCCUPIED = 1
    MAX_COMPRESSION = 2

# Grow when (entries + 1) / slots > 3/4 (spec: load factor 0.75).
cdef inline bint needs_grow(uint64_t entries, uint64_t slots) noexcept nogil:
    return (entries + 1) * 4 > slots * 3

cdef inline uint64_t mix(uint64_t x) noexcept nogil:
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x

cdef inline uint64_t hash_u128(uint64_t lo, uint64_t hi, uint64_t seed) noexcept nogil:
    return mix(lo ^ seed) ^ mix(hi ^ (seed * 0x9e3779b97f4a7c15ULL))

cdef inline dh_slot* slot_at(const unsigned char *base, uint64_t i) noexcept nogil:
    return <dh_slot*>(base + HEADER_SIZE + i * SLOT_SIZE)

# Probe result codes besides a slot index.
cdef enum:
    PROBE_MISS = -1      # reached an empty slot: not present
    PROBE_FULL = -2      # walked every slot without an empty one: corrupt
    PROBE_BADTAG = -3    # met a tag that is neither 0 nor 1: corrupt

# Find `key` from home slot `i`; returns its slot, or a PROBE_* code.  On a
# miss, *empty receives the first empty slot (where an insert would go).
# The loop is bounded by num_slots, so a damaged file cannot make it spin.
# (The batch loops hash a few keys ahead to prefetch, so they pass `i`.)
cdef inline int64_t probe_from(const unsigned char *base, uint64_t mask, uint64_t i,
                               uint64_t lo, uint64_t hi, uint64_t *empty) noexcept nogil:
    cdef uint64_t n
    cdef const dh_slot *s
    for n in range(mask + 1):
        s = slot_at(base, i)
        if s.tag == TAG_EMPTY:
            empty[0] = i
            return PROBE_MISS
        if s.tag != TAG_OCCUPIED:
            empty[0] = i
            return PROBE_BADTAG
        if s.key_lo == lo and s.key_hi == hi:
            return <int64_t>i
        i = (i + 1) & mask
    return PROBE_FULL

# The same, from the key's home slot.
cdef inline int64_t probe(const unsigned char *base, uint64_t mask, uint64_t seed,
                          uint64_t lo, uint64_t hi, uint64_t *empty) noexcept nogil:
    return probe_from(base, mask, hash_u128(lo, hi, seed) & mask, lo, hi, empty)
