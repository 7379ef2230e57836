"""The suite's records and the tables it fills with them."""

from __future__ import annotations

import operator
import uuid

from diskhash import PayloadMeta
from helpers.spec_model import HEADER, SLOT, file_size, slot_offset

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


def record(key: int, **fields) -> PayloadMeta:
    """The suite's record for ``key`` (an int in ``[0, 2**128)`` or a UUID).

    Every field derives from the key, so a torn record or one read back under
    the wrong key shows; ``fields`` (``offset=``, ``length=``, ``compression=``,
    ``uncompressed_length=``) override them, for an overwrite that differs.
    """
    k = key.int if isinstance(key, uuid.UUID) else operator.index(key)
    values = {"offset": (k * 7) & U64, "length": (k >> 3) & U32,
              "compression": k % 3, "uncompressed_length": (k >> 70) & U32}
    values.update(fields)
    return PayloadMeta(key, **values)


def fill_to_capacity(idx, start: int = 0) -> list[int]:
    """Insert ``record(k)`` for k = start, start+1, ... until the next new key
    must grow the table; returns every key the index then holds from that
    range (the ones present before included).  ``idx`` is a ``DiskHashIndex``
    (for an ``AsyncDiskHashIndex`` pass ``.sync``)."""
    keys = list(range(start, start + idx.capacity - len(idx)))
    for k in keys:
        idx.insert(k, record(k))
    assert len(idx) == idx.capacity
    return keys


def fill_every_slot(path, slots=4096):
    """A table with no empty slot: every slot occupied by a distinct key."""
    data = bytearray(file_size(slots))
    HEADER.pack_into(data, 0, b"SOCHIDX2", 1, bytes(4), slots, slots, 12345, bytes(24))
    for i in range(slots):
        SLOT.pack_into(data, slot_offset(i), 1, 0, 0, 0, 0, 0, (i + 10**9).to_bytes(16, "little"), 0)
    path.write_bytes(bytes(data))


def random_key_array(rng, n: int):
    """``n`` random 128-bit ids as a ``KEY_DTYPE`` array, drawn from the numpy
    Generator ``rng`` (low halves, then high halves)."""
    import numpy as np

    from diskhash import KEY_DTYPE
    keys = np.empty(n, dtype=KEY_DTYPE)
    keys["lo"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    keys["hi"] = rng.integers(0, 2**64, n, dtype=np.uint64)
    return keys
