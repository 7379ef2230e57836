"""Stubs for diskhash/_format.pyx: the SOCHIDX2 hash, for tools and tests."""

HEADER_SIZE_BYTES: int
SLOT_SIZE_BYTES: int
MIN_NUM_SLOTS: int
VERSION: int
MAGIC: bytes

def hash_key(key: int, seed: int) -> int: ...
def home_slot(key: int, seed: int, num_slots: int) -> int: ...
