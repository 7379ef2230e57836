"""Stubs for diskhash/_format/sochidx2.pyx: the SOCHIDX2 layout and hash, for tools and tests."""

MAGIC: bytes
VERSION: int
HEADER_SIZE: int
SLOT_SIZE: int
MIN_SLOTS: int
MAX_COMPRESSION: int
TAG_EMPTY: int
TAG_OCCUPIED: int
HEADER_SIZE_BYTES: int
SLOT_SIZE_BYTES: int
MIN_NUM_SLOTS: int
HEADER_FIELDS: dict[str, tuple[int, int]]
HEADER_RESERVED: tuple[tuple[int, int], ...]
SLOT_FIELDS: dict[str, tuple[int, int]]
MARKER_SIZE: int
UNDO_OFFSET: int
UNDO_SIZE: int
PAGE_BYTES: int
SHARED_AT: int
UNDO_FIELDS: dict[str, tuple[int, int]]
UNDO_ARMED: int

def table_bytes(num_slots: int) -> int: ...
def slot_offset(i: int) -> int: ...
def pack_header(num_slots: int, num_entries: int, seed: int) -> bytes: ...
def unpack_header(data: bytes | bytearray | memoryview) -> tuple[bytes, int, int, int, int]: ...
def header_reserved(data: bytes | bytearray | memoryview) -> bytes: ...
def unpack_slot(data: bytes | bytearray | memoryview, i: int) -> dict[str, int]: ...
def hash_key(key: int, seed: int) -> int: ...
def home_slot(key: int, seed: int, num_slots: int) -> int: ...
