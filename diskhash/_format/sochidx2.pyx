# cython: language_level=3
"""The SOCHIDX2 layout and hash, exposed to Python for tools and tests.

Every offset and size comes from ``sochidx2.pxd`` (where the compiler checks
them against the structs the index maps); nothing in Python spells a byte
offset.  The compiled index uses the inline hash of the ``.pxd``; ``hash_key``
lets Python check it against the spec's test vectors.
"""
import mmap

from libc.stdint cimport uint64_t

from diskhash.errors import KeyRangeError

MAGIC = b"SOCHIDX2"
VERSION = FORMAT_VERSION
# The .pxd's C constants under their own names (a plain assignment cannot
# reuse a name the .pxd declares).
globals().update(
    HEADER_SIZE=HEADER_SIZE, SLOT_SIZE=SLOT_SIZE, MIN_SLOTS=MIN_SLOTS,
    MAX_COMPRESSION=MAX_COMPRESSION, TAG_EMPTY=TAG_EMPTY, TAG_OCCUPIED=TAG_OCCUPIED,
    MARKER_SIZE=MARKER_SIZE, UNDO_SIZE=UNDO_SIZE, PAGE_BYTES=PAGE_BYTES, SHARED_AT=SHARED_AT,
)
# Kept for existing callers.
HEADER_SIZE_BYTES = HEADER_SIZE
SLOT_SIZE_BYTES = SLOT_SIZE
MIN_NUM_SLOTS = MIN_SLOTS

# name: (offset, size in bytes); integers are little-endian and unsigned.
HEADER_FIELDS = {
    "magic": (OFF_MAGIC, MAGIC_SIZE),
    "version": (OFF_VERSION, 4),
    "num_slots": (OFF_NUM_SLOTS, 8),
    "num_entries": (OFF_NUM_ENTRIES, 8),
    "seed": (OFF_SEED, 8),
}
HEADER_RESERVED = ((OFF_RESERVED_A, RESERVED_A_SIZE), (OFF_RESERVED_B, RESERVED_B_SIZE))
SLOT_FIELDS = {
    "tag": (SLOT_TAG, 1),
    "compression": (SLOT_COMPRESSION, 1),
    "reserved0": (SLOT_RESERVED_A, 2),
    "length": (SLOT_LENGTH, 4),
    "uncompressed_length": (SLOT_UNCOMPRESSED, 4),
    "reserved1": (SLOT_RESERVED_B, 4),
    "key": (SLOT_KEY, 16),
    "offset": (SLOT_OFFSET, 8),
}

# The sidecar lock file: marker text first, the undo record in its own page.
UNDO_OFFSET = max(mmap.ALLOCATIONGRANULARITY, MARKER_SIZE)
UNDO_FIELDS = {
    "armed": (UNDO_ARMED_AT, 8),
    "slot": (UNDO_SLOT, 8),
    "num_slots": (UNDO_NUM_SLOTS, 8),
    "old": (UNDO_OLD, SLOT_SIZE),
}
UNDO_ARMED = DH_UNDO_ARMED


def table_bytes(num_slots):
    """The file size of a table of ``num_slots`` slots."""
    return HEADER_SIZE + num_slots * SLOT_SIZE


def slot_offset(i):
    """Where slot ``i`` starts in the file."""
    return HEADER_SIZE + i * SLOT_SIZE


def _field(data, fields, name, base=0):
    off, size = fields[name]
    return bytes(data[base + off: base + off + size])


def pack_header(num_slots, num_entries, seed):
    """The 64 header bytes of a table (reserved bytes zero)."""
    out = bytearray(HEADER_SIZE)
    values = {"magic": MAGIC, "version": VERSION, "num_slots": num_slots,
              "num_entries": num_entries, "seed": seed}
    for name, (off, size) in HEADER_FIELDS.items():
        v = values[name]
        out[off: off + size] = v if isinstance(v, bytes) else v.to_bytes(size, "little")
    return bytes(out)


def unpack_header(data):
    """``(magic, version, num_slots, num_entries, seed)`` from a header's bytes."""
    return (_field(data, HEADER_FIELDS, "magic"),
            *(int.from_bytes(_field(data, HEADER_FIELDS, name), "little")
              for name in ("version", "num_slots", "num_entries", "seed")))


def header_reserved(data):
    """The header's reserved bytes, concatenated (all zero in a valid file)."""
    return b"".join(bytes(data[off: off + size]) for off, size in HEADER_RESERVED)


def unpack_slot(data, i):
    """Slot ``i`` of a whole file's bytes as a dict of its fields (ints)."""
    base = slot_offset(i)
    return {name: int.from_bytes(_field(data, SLOT_FIELDS, name, base), "little")
            for name in SLOT_FIELDS}


def hash_key(key, seed):
    """``hash(key, seed)`` of the spec, for a key in [0, 2**128)."""
    key = int(key)
    if not 0 <= key < 2**128:
        raise KeyRangeError(key)
    cdef uint64_t lo = key & 0xFFFFFFFFFFFFFFFF
    cdef uint64_t hi = key >> 64
    cdef uint64_t s = seed
    return hash_u128(lo, hi, s)


def home_slot(key, seed, num_slots):
    """The slot a lookup of ``key`` starts at in a table of ``num_slots``."""
    return hash_key(key, seed) & (num_slots - 1)
