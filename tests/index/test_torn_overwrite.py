"""An overwrite interrupted by a crash is rolled back, never left torn.

An overwrite stores the new record's fields in place; a process killed
between two of those stores would leave a record mixing old and new fields.
The writer keeps the slot's old bytes in the undo page of the sidecar
``.lock`` file while it stores, and the next writable open puts them back.
The kill itself cannot be aimed at a window of a few instructions, so these
tests build the state such a kill leaves: a torn slot, the undo page armed,
the marker saying the writer did not close.
"""

from __future__ import annotations

import mmap
import struct

import pytest
from helpers.spec_model import SLOT, SLOT_FIELD, header_u64, slot_key, slot_offset

from diskhash import DiskHashIndex, PayloadMeta
from diskhash._fs.files import MARKER_SIZE, UNDO_OFFSET

ARMED = int.from_bytes(b"DISKHUND", "little")
UNDO = struct.Struct(f"<QQQ{SLOT.size}s")   # armed, slot, num_slots, the old slot bytes


def slot_of(path, key: int) -> int:
    """The slot holding `key` (scan of the file, independent of the index)."""
    data = path.read_bytes()
    for i in range(header_u64(data, "num_slots")):
        if data[slot_offset(i) + SLOT_FIELD["tag"]] == 1 and slot_key(data, i) == key:
            return i
    raise AssertionError(f"key {key} not in the file")


def read_undo(path):
    raw = (path.parent / (path.name + ".lock")).read_bytes()[UNDO_OFFSET: UNDO_OFFSET + UNDO.size]
    return UNDO.unpack(raw)


def crash_state(path, key: int, torn: bytes | None = None, undo_old: bytes | None = None,
                undo_slot: int | None = None, num_slots: int | None = None) -> tuple[int, bytes]:
    """Leave `path` as a writer killed inside an overwrite of `key` would."""
    slot = slot_of(path, key)
    with open(path, "r+b") as f:
        f.seek(slot_offset(slot))
        old = f.read(SLOT.size)
        if torn is not None:
            f.seek(slot_offset(slot))
            f.write(torn)
        f.seek(0)
        slots = header_u64(f.read(slot_offset(0)), "num_slots")
    lock = path.parent / (path.name + ".lock")
    with open(lock, "r+b") as f:
        f.write(b"diskhash-dirty".ljust(MARKER_SIZE - 1) + b"\n")
        with mmap.mmap(f.fileno(), UNDO.size, offset=UNDO_OFFSET) as m:
            m[: UNDO.size] = UNDO.pack(ARMED, slot if undo_slot is None else undo_slot,
                                       slots if num_slots is None else num_slots,
                                       old if undo_old is None else undo_old)
    return slot, old


def torn_slot(old: bytes, new: PayloadMeta) -> bytes:
    """Old record with the new compression and offset, the old lengths: a mix."""
    b = bytearray(old)
    b[SLOT_FIELD["compression"]] = int(new.compression)
    b[SLOT_FIELD["offset"]: SLOT_FIELD["offset"] + 8] = new.offset.to_bytes(8, "little")
    return bytes(b)


@pytest.fixture
def saved(index_path):
    old = {k: PayloadMeta(k, 1000 + k, 10 + k, 0, 20 + k) for k in range(1, 2001)}
    with DiskHashIndex(index_path) as idx:
        for k, m in old.items():
            idx.insert(k, m)
    return old


def test_torn_overwrite_is_rolled_back_by_the_next_writable_open(index_path, saved):
    new = PayloadMeta(77, 999_999, 5, 2, 6)
    _, old_bytes = crash_state(index_path, 77, torn=None)
    # The torn record the kill left: neither the old nor the new one.
    slot = slot_of(index_path, 77)
    with open(index_path, "r+b") as f:
        f.seek(slot_offset(slot))
        f.write(torn_slot(old_bytes, new))
    with DiskHashIndex(index_path, readonly=True) as idx:     # readers never write: still torn
        assert idx[77] not in (saved[77], new)
    with DiskHashIndex(index_path) as idx:
        assert idx.recovery is not None
        assert idx[77] == saved[77]
        assert dict(idx.items()) == saved
        idx.verify()
    assert read_undo(index_path)[0] == 0              # disarmed
    with DiskHashIndex(index_path) as idx:            # and a clean close after it
        assert idx.recovery is None and idx[77] == saved[77]


def test_an_armed_undo_for_another_key_or_table_changes_nothing(index_path, saved):
    # The slot now holds a different key (or the table has another size):
    # the record does not describe this file, so it is dropped unused.
    _, other = crash_state(index_path, 5)
    crash_state(index_path, 6, undo_old=other)        # undo names key 5's bytes at key 6's slot
    with DiskHashIndex(index_path) as idx:
        assert idx[6] == saved[6] and idx[5] == saved[5]
        idx.verify()
    assert read_undo(index_path)[0] == 0
    crash_state(index_path, 9, num_slots=8192)
    with DiskHashIndex(index_path) as idx:
        assert dict(idx.items()) == saved
    assert read_undo(index_path)[0] == 0


def test_overwrites_leave_the_undo_page_disarmed(index_path, saved):
    with DiskHashIndex(index_path) as idx:
        for k in range(1, 2001, 3):
            idx.insert(k, PayloadMeta(k, 5, 6, 1, 7))
        slot, key_bytes = read_undo(index_path)[1], read_undo(index_path)[3][16:32]
        assert read_undo(index_path)[0] == 0
        # The last overwrite did use the page: it names key 1999's slot and old bytes.
        assert int.from_bytes(key_bytes, "little") == 1999
        assert slot == slot_of(index_path, 1999)
