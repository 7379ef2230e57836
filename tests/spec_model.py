"""An independent, pure-Python reader of SOCHIDX2, written from the spec.

Used to check that files diskhash writes are valid for *any* reader of the
spec, not just for diskhash itself.
"""

from __future__ import annotations

import struct

M64 = (1 << 64) - 1
HEADER = struct.Struct("<8sI4sQQQ24s")
SLOT = struct.Struct("<BBHIII16sQ")


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
        tag, comp, r0, length, ulen, r1, key, offset = SLOT.unpack_from(data, 64 + 40 * i)
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
    assert t["size"] == 64 + 40 * n
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
