"""The one definition of the layout (_format/sochidx2.pxd, exposed by _format/sochidx2.pyx) agrees
with the spec's structs as tests/helpers/spec_model.py spells them independently."""

from __future__ import annotations

import struct
from itertools import pairwise

from helpers.spec_model import HEADER, SLOT, read_table

from diskhash import DiskHashIndex, PayloadMeta
from diskhash._format import sochidx2 as fmt


def test_header_layout_matches_the_spec():
    assert fmt.HEADER_SIZE == HEADER.size == 64
    packed = fmt.pack_header(8192, 17, 0xDEADBEEF)
    assert HEADER.unpack(packed) == (b"SOCHIDX2", 1, b"\0" * 4, 8192, 17, 0xDEADBEEF, b"\0" * 24)
    assert fmt.unpack_header(packed) == (b"SOCHIDX2", 1, 8192, 17, 0xDEADBEEF)
    assert fmt.header_reserved(packed) == bytes(28)
    spans = sorted([*fmt.HEADER_FIELDS.values(), *fmt.HEADER_RESERVED])
    assert [off for off, _ in spans] == [0, 8, 12, 16, 24, 32, 40]      # contiguous, no overlap
    assert all(a + n == b for (a, n), (b, _) in pairwise(spans))
    assert spans[-1][0] + spans[-1][1] == fmt.HEADER_SIZE


def test_slot_layout_matches_the_spec():
    assert fmt.SLOT_SIZE == SLOT.size == 40
    spec_offsets = [0, 1, 2, 4, 8, 12, 16, 32]        # struct "<BBHIII16sQ", field by field
    assert [off for off, _ in fmt.SLOT_FIELDS.values()] == spec_offsets
    assert sum(size for _, size in fmt.SLOT_FIELDS.values()) == fmt.SLOT_SIZE


def test_unpack_slot_reads_what_the_index_wrote(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(2**100 + 7, PayloadMeta(2**100 + 7, 99, 5, 2, 6))
    data = index_path.read_bytes()
    table = read_table(data)
    (i, spec_slot), = [(i, s) for i, s in enumerate(table["slots"]) if s]
    mine = fmt.unpack_slot(data, i)
    assert mine["key"] == spec_slot["key"] == 2**100 + 7
    assert (mine["tag"], mine["compression"], mine["length"], mine["uncompressed_length"],
            mine["offset"]) == (1, 2, 5, 6, 99)
    assert fmt.slot_offset(i) == fmt.HEADER_SIZE + i * fmt.SLOT_SIZE
    assert fmt.table_bytes(table["num_slots"]) == len(data)


def test_undo_record_fits_its_page():
    assert fmt.UNDO_OFFSET >= fmt.MARKER_SIZE and fmt.UNDO_OFFSET % 4096 == 0
    last = max(off + size for off, size in fmt.UNDO_FIELDS.values())
    assert last <= fmt.UNDO_SIZE
    assert struct.pack("<Q", fmt.UNDO_ARMED) == b"DISKHUND"
