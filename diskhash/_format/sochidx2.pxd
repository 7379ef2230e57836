# The SOCHIDX2 layout (every offset and size, defined once) and hash, as inline C.
# Everything here is nogil and allocation-free: the probe loops cimport it.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #error "diskhash maps SOCHIDX2 (little-endian) directly and needs a little-endian CPU"
    #endif
    /* ---- The SOCHIDX2 layout: every offset and size, defined here only ----
       (all integers little-endian, unsigned). */
    #define DH_FORMAT_VERSION 1
    #define DH_MIN_SLOTS 4096
    /* Header: 64 bytes. */
    #define DH_HEADER_SIZE 64
    #define DH_OFF_MAGIC 0            /* 8 bytes, "SOCHIDX2" */
    #define DH_MAGIC_SIZE 8
    #define DH_OFF_VERSION 8          /* u32 */
    #define DH_OFF_RESERVED_A 12      /* 4 zero bytes */
    #define DH_RESERVED_A_SIZE 4
    #define DH_OFF_NUM_SLOTS 16       /* u64, a power of two >= DH_MIN_SLOTS */
    #define DH_OFF_NUM_ENTRIES 24     /* u64 */
    #define DH_OFF_SEED 32            /* u64, nonzero */
    #define DH_OFF_RESERVED_B 40      /* 24 zero bytes, to the end of the header */
    #define DH_RESERVED_B_SIZE 24
    /* Slot i: 40 bytes at DH_HEADER_SIZE + i * DH_SLOT_SIZE. */
    #define DH_SLOT_SIZE 40
    #define DH_SLOT_TAG 0             /* u8: 0 empty, 1 occupied */
    #define DH_SLOT_COMPRESSION 1     /* u8: 0 none, 1 LZ4, 2 ZSTD */
    #define DH_SLOT_RESERVED_A 2      /* u16, zero */
    #define DH_SLOT_LENGTH 4          /* u32 */
    #define DH_SLOT_UNCOMPRESSED 8    /* u32 */
    #define DH_SLOT_RESERVED_B 12     /* u32, zero */
    #define DH_SLOT_KEY 16            /* u128: key_lo (u64) then key_hi (u64) */
    #define DH_SLOT_OFFSET 32         /* u64 */
    #define DH_TAG_EMPTY 0
    #define DH_TAG_OCCUPIED 1
    #define DH_MAX_COMPRESSION 2
    /* The sidecar <index>.lock file (diskhash's own, not SOCHIDX2): the
       clean-close marker, text, in the first DH_MARKER_SIZE bytes; the
       writer's undo record at the start of a page of its own (the system's
       mmap allocation granularity). */
    #define DH_MARKER_SIZE 256
    #define DH_UNDO_SIZE 64
    #define DH_UNDO_ARMED_AT 0        /* u64, DH_UNDO_ARMED while armed */
    #define DH_UNDO_SLOT 8            /* u64 */
    #define DH_UNDO_NUM_SLOTS 16      /* u64 */
    #define DH_UNDO_OLD 24            /* the slot's 40 old bytes */
    typedef struct {
        uint8_t  tag;
        uint8_t  compression;
        uint16_t reserved0;
        uint32_t length;
        uint32_t uncompressed_length;
        uint32_t reserved1;
        uint64_t key_lo;
        uint64_t key_hi;
        uint64_t offset;
    } dh_slot;
    /* The writer's undo record: while `armed` holds DH_UNDO_ARMED, slot
       `slot` of a `num_slots` table may be half overwritten and `old` is
       what it held before. */
    typedef struct {
        uint64_t armed;
        uint64_t slot;
        uint64_t num_slots;
        dh_slot old;
    } dh_undo;
    /* The structs the code maps are the layout above, checked by the compiler. */
    _Static_assert(sizeof(dh_slot) == DH_SLOT_SIZE, "slot size");
    _Static_assert(offsetof(dh_slot, tag) == DH_SLOT_TAG, "slot tag");
    _Static_assert(offsetof(dh_slot, compression) == DH_SLOT_COMPRESSION, "slot compression");
    _Static_assert(offsetof(dh_slot, reserved0) == DH_SLOT_RESERVED_A, "slot reserved0");
    _Static_assert(offsetof(dh_slot, length) == DH_SLOT_LENGTH, "slot length");
    _Static_assert(offsetof(dh_slot, uncompressed_length) == DH_SLOT_UNCOMPRESSED, "slot ulen");
    _Static_assert(offsetof(dh_slot, reserved1) == DH_SLOT_RESERVED_B, "slot reserved1");
    _Static_assert(offsetof(dh_slot, key_lo) == DH_SLOT_KEY, "slot key_lo");
    _Static_assert(offsetof(dh_slot, key_hi) == DH_SLOT_KEY + 8, "slot key_hi");
    _Static_assert(offsetof(dh_slot, offset) == DH_SLOT_OFFSET, "slot offset");
    _Static_assert(offsetof(dh_undo, armed) == DH_UNDO_ARMED_AT, "undo armed");
    _Static_assert(offsetof(dh_undo, slot) == DH_UNDO_SLOT, "undo slot");
    _Static_assert(offsetof(dh_undo, num_slots) == DH_UNDO_NUM_SLOTS, "undo num_slots");
    _Static_assert(offsetof(dh_undo, old) == DH_UNDO_OLD, "undo old");
    _Static_assert(sizeof(dh_undo) <= DH_UNDO_SIZE, "undo size");
    _Static_assert(DH_OFF_RESERVED_B + DH_RESERVED_B_SIZE == DH_HEADER_SIZE, "header size");
    #define DH_UNDO_ARMED 0x444e55484b534944ULL   /* "DISKHUND" */
    /* ---- The lock file's shared page (issue 17): after the undo record, in
       the same mapped page, read by every opener of the index, written by
       the writer holding `mutex` (a robust process-shared pthread mutex,
       the cross-process writer lock).  `seq` is a seqlock: odd while a
       writer changes slots; `table_gen` counts the times the table FILE was
       replaced (grow, repair), so other processes know to re-map it. */
    #include <pthread.h>
    #define DH_SHARED_AT 128          /* offset of dh_shared in the undo page */
    #define DH_PAGE_BYTES 256         /* the bytes of the undo page diskhash maps */
    #define DH_SHARED_MAGIC 0x31524853484b5344ULL   /* "DSKHSHR1" */
    #define DH_SHARED_NEEDS_HEAL 1ULL /* flags: recount/heal at the next write */
    typedef struct {
        uint64_t magic;
        uint64_t seq;
        uint64_t table_gen;
        uint64_t flags;
        uint64_t owner_pid;           /* pid of the mutex holder, 0 when free */
        uint64_t key_changes;         /* keys added or removed (iterators of other processes) */
        uint64_t reserved[2];
        pthread_mutex_t mutex;
    } dh_shared;
    _Static_assert(offsetof(dh_shared, seq) == 8, "shared seq");
    _Static_assert(offsetof(dh_shared, table_gen) == 16, "shared table_gen");
    _Static_assert(offsetof(dh_shared, mutex) == 64, "shared mutex");
    _Static_assert(sizeof(pthread_mutex_t) <= 64, "pthread_mutex_t fits");
    _Static_assert(DH_UNDO_SIZE <= DH_SHARED_AT, "undo before shared");
    _Static_assert(DH_SHARED_AT + sizeof(dh_shared) <= DH_PAGE_BYTES, "shared page size");
    /* Seqlock halves with real atomics (two processes on two cores). */
    static inline uint64_t dh_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline uint64_t dh_load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void dh_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline void dh_seq_begin(uint64_t *p) {
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);    /* seq odd before any slot store */
    }
    static inline void dh_seq_end(uint64_t *p) {
        __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + 1, __ATOMIC_RELEASE);
    }
    static inline void *dh_shared_mutex(dh_shared *s) { return &s->mutex; }
    static inline int dh_seq_valid(const uint64_t *p, uint64_t s) {
        __atomic_thread_fence(__ATOMIC_ACQUIRE);    /* the copy's loads before the re-check */
        return __atomic_load_n(p, __ATOMIC_RELAXED) == s;
    }
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
    ctypedef struct dh_shared:
        uint64_t magic
        uint64_t seq
        uint64_t table_gen
        uint64_t flags
        uint64_t owner_pid
        uint64_t key_changes
    uint64_t DH_SHARED_MAGIC
    uint64_t DH_SHARED_NEEDS_HEAL
    uint64_t dh_load_acquire(const uint64_t *p) nogil
    uint64_t dh_load_relaxed(const uint64_t *p) nogil
    void dh_store_release(uint64_t *p, uint64_t v) nogil
    void dh_seq_begin(uint64_t *p) nogil
    void dh_seq_end(uint64_t *p) nogil
    bint dh_seq_valid(const uint64_t *p, uint64_t s) nogil
    void *dh_shared_mutex(dh_shared *s) nogil
    uint64_t DH_UNDO_ARMED
    uint64_t DH_MAX_SLOTS
    void DH_COMPILER_BARRIER() nogil
    void DH_PREFETCH(const void *p) nogil
    # The layout's constants, under the names the code uses.
    enum:
        FORMAT_VERSION "DH_FORMAT_VERSION"
        MIN_SLOTS "DH_MIN_SLOTS"
        HEADER_SIZE "DH_HEADER_SIZE"
        OFF_MAGIC "DH_OFF_MAGIC"
        MAGIC_SIZE "DH_MAGIC_SIZE"
        OFF_VERSION "DH_OFF_VERSION"
        OFF_RESERVED_A "DH_OFF_RESERVED_A"
        RESERVED_A_SIZE "DH_RESERVED_A_SIZE"
        OFF_NUM_SLOTS "DH_OFF_NUM_SLOTS"
        OFF_NUM_ENTRIES "DH_OFF_NUM_ENTRIES"
        OFF_SEED "DH_OFF_SEED"
        OFF_RESERVED_B "DH_OFF_RESERVED_B"
        RESERVED_B_SIZE "DH_RESERVED_B_SIZE"
        SLOT_SIZE "DH_SLOT_SIZE"
        SLOT_TAG "DH_SLOT_TAG"
        SLOT_COMPRESSION "DH_SLOT_COMPRESSION"
        SLOT_RESERVED_A "DH_SLOT_RESERVED_A"
        SLOT_LENGTH "DH_SLOT_LENGTH"
        SLOT_UNCOMPRESSED "DH_SLOT_UNCOMPRESSED"
        SLOT_RESERVED_B "DH_SLOT_RESERVED_B"
        SLOT_KEY "DH_SLOT_KEY"
        SLOT_OFFSET "DH_SLOT_OFFSET"
        TAG_EMPTY "DH_TAG_EMPTY"
        TAG_OCCUPIED "DH_TAG_OCCUPIED"
        MAX_COMPRESSION "DH_MAX_COMPRESSION"
        MARKER_SIZE "DH_MARKER_SIZE"
        UNDO_SIZE "DH_UNDO_SIZE"
        UNDO_ARMED_AT "DH_UNDO_ARMED_AT"
        UNDO_SLOT "DH_UNDO_SLOT"
        UNDO_NUM_SLOTS "DH_UNDO_NUM_SLOTS"
        UNDO_OLD "DH_UNDO_OLD"
        SHARED_AT "DH_SHARED_AT"
        PAGE_BYTES "DH_PAGE_BYTES"

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
    cdef uint64_t _n
    cdef const dh_slot *s
    for _n in range(mask + 1):
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
