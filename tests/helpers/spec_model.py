"""An independent, pure-Python reader of SOCHIDX2, written from the spec.

Used to check that files diskhash writes are valid for *any* reader of the
spec, not just for diskhash itself.
"""

from __future__ import annotations

import re
import struct

M64 = (1 << 64) - 1
HEADER = struct.Struct("<8sI4sQQQ24s")
SLOT = struct.Struct("<BBHIII16sQ")
HEADER_NAMES = ("magic", "version", "reserved0", "num_slots", "num_entries", "seed", "reserved1")
SLOT_NAMES = ("tag", "compression", "reserved0", "length", "uncompressed_length", "reserved1",
              "key", "offset")


def _field_offsets(layout: struct.Struct, names: tuple[str, ...]) -> dict[str, int]:
    """Byte offset of each field of ``layout``, computed from its format string."""
    order, codes = layout.format[0], re.findall(r"\d*[a-zA-Z]", layout.format[1:])
    assert len(codes) == len(names)
    return {name: struct.calcsize(order + "".join(codes[:i])) for i, name in enumerate(names)}


#: Where each header field starts (``HEADER_FIELD["num_slots"]``: 16).
HEADER_FIELD = _field_offsets(HEADER, HEADER_NAMES)
#: Where each slot field starts, from the slot's first byte (``SLOT_FIELD["key"]``: 16).
SLOT_FIELD = _field_offsets(SLOT, SLOT_NAMES)


def slot_offset(i: int) -> int:
    """The file offset of slot ``i``: after the header, ``i`` slots in."""
    return HEADER.size + SLOT.size * i


def file_size(num_slots: int) -> int:
    """The size of a file of ``num_slots`` slots."""
    return slot_offset(num_slots)


def header_u64(data: bytes, name: str) -> int:
    """A u64 header field (``num_slots``, ``num_entries``, ``seed``) of the bytes ``data``."""
    return int.from_bytes(data[HEADER_FIELD[name]: HEADER_FIELD[name] + 8], "little")


def set_header_u64(data: bytearray, name: str, value: int) -> None:
    """Overwrite a u64 header field of ``data`` in place."""
    data[HEADER_FIELD[name]: HEADER_FIELD[name] + 8] = value.to_bytes(8, "little")


def slot_key(data: bytes, i: int) -> int:
    """The 128-bit key stored in slot ``i`` of ``data``."""
    at = slot_offset(i) + SLOT_FIELD["key"]
    return int.from_bytes(data[at: at + 16], "little")


def mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & M64
    x ^= x >> 31
    return x


def spec_hash(key: int, seed: int) -> int:
    lo, hi = key & M64, key >> 64
    return mix(lo ^ seed) ^ mix(hi ^ ((seed * 0x9E3779B97F4A7C15) & M64))


def read_table(data: bytes) -> dict:
    """Parse a whole file; returns header fields and slot list (None for empty)."""
    magic, version, res1, num_slots, num_entries, seed, res2 = HEADER.unpack_from(data, 0)
    slots = []
    for i in range(num_slots):
        tag, comp, r0, length, ulen, r1, key, offset = SLOT.unpack_from(data, slot_offset(i))
        if tag == 0:
            slots.append(None)
            continue
        slots.append(dict(tag=tag, compression=comp, reserved=(r0, r1), length=length,
                          uncompressed_length=ulen, key=int.from_bytes(key, "little"), offset=offset))
    return dict(magic=magic, version=version, reserved=(res1, res2), num_slots=num_slots,
                num_entries=num_entries, seed=seed, slots=slots, size=len(data))


def spec_lookup(table: dict, key: int):
    """The spec's lookup: from the home slot, step +1 until the key or an empty slot."""
    n = table["num_slots"]
    i = spec_hash(key, table["seed"]) & (n - 1)
    for _ in range(n):
        s = table["slots"][i]
        if s is None:
            return None
        if s["key"] == key:
            return (key, s["offset"], s["length"], s["compression"], s["uncompressed_length"])
        i = (i + 1) & (n - 1)
    raise AssertionError("no empty slot")


def assert_valid(data: bytes) -> dict[int, tuple]:
    """Assert every promise of a diskhash-written file; return its entries."""
    t = read_table(data)
    assert t["magic"] == b"SOCHIDX2"
    assert t["version"] == 1
    assert t["reserved"] == (b"\0" * 4, b"\0" * 24)
    n = t["num_slots"]
    assert n >= 4096 and n & (n - 1) == 0
    assert t["seed"] != 0
    assert t["size"] == file_size(n)
    entries = {}
    for s in t["slots"]:
        if s is None:
            continue
        assert s["tag"] == 1 and s["compression"] in (0, 1, 2) and s["reserved"] == (0, 0)
        assert s["key"] not in entries, "duplicate key"
        entries[s["key"]] = (s["key"], s["offset"], s["length"], s["compression"], s["uncompressed_length"])
    assert t["num_entries"] == len(entries)
    assert None in t["slots"], "no empty slot"
    for key, value in entries.items():
        assert spec_lookup(t, key) == value, f"key {key} unreachable from its home slot"
    return entries
