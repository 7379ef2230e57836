"""Damaged headers fail at open (O(1)); damaged tables fail at the lookup that meets them."""

from __future__ import annotations

import pytest
from helpers.records import fill_every_slot
from helpers.spec_model import HEADER, SLOT_FIELD, file_size, slot_offset

from diskhash import CorruptIndexError, DiskHashError, DiskHashIndex, PayloadMeta


def write_header(path, magic=b"SOCHIDX2", version=1, slots=4096, entries=0, seed=99, size=None):
    size = file_size(slots) if size is None else size
    data = bytearray(max(size, HEADER.size))
    HEADER.pack_into(data, 0, magic, version, bytes(4), slots, entries, seed, bytes(24))
    path.write_bytes(bytes(data[:size]))


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(magic=b"SOCHIDX1"), "bad magic"),
        (dict(version=2), "unknown format version 2"),
        (dict(slots=4095, size=file_size(4096)), "not a power of two"),
        (dict(slots=0, size=HEADER.size), "not a power of two"),
        (dict(size=file_size(4095)), "truncated"),
        (dict(size=10), "shorter than the 64-byte header"),
        (dict(slots=2**60, size=file_size(1)), "truncated"),
    ],
)
@pytest.mark.parametrize("readonly", [True, False])
def test_bad_header_raises_corrupt_index_error_naming_file(index_path, kwargs, words, readonly):
    write_header(index_path, **kwargs)
    before = index_path.read_bytes()
    with pytest.raises(CorruptIndexError, match=words) as info:
        DiskHashIndex(index_path, readonly=readonly)
    assert str(index_path) in str(info.value)
    assert info.value.path == str(index_path)
    assert info.value.defects
    assert isinstance(info.value, DiskHashError)
    assert index_path.read_bytes() == before  # nothing written


def test_failed_open_releases_the_lock(index_path):
    write_header(index_path, magic=b"NOTANIDX")
    with pytest.raises(CorruptIndexError):
        DiskHashIndex(index_path)
    index_path.unlink()
    with DiskHashIndex(index_path) as idx:  # the lock was released
        idx.insert(1, PayloadMeta(1, 0, 0, 0, 0))


def test_longer_file_is_tolerated(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(5, PayloadMeta(5, 1, 2, 0, 3))
    with open(index_path, "ab") as f:
        f.write(b"\xff" * 1000)
    with DiskHashIndex(index_path, readonly=True) as idx:
        assert idx[5] == (5, 1, 2, 0, 3)


def test_table_without_empty_slot_opens_fast_and_fails_at_lookup(index_path):
    fill_every_slot(index_path)
    with DiskHashIndex(index_path, readonly=True) as idx:   # O(1) open: no scan
        with pytest.raises(CorruptIndexError, match="no empty slot"):
            idx.get(1)                                      # absent: must not spin
        with pytest.raises(CorruptIndexError, match="no empty slot"):
            _ = 1 in idx
        with pytest.raises(CorruptIndexError) as info:
            idx.verify()
        assert any("no empty slot" in d for d in info.value.defects)


def test_bad_tag_met_by_a_lookup(index_path):
    with DiskHashIndex(index_path) as idx:
        seed = idx.seed
    from diskhash._format.sochidx2 import home_slot

    data = bytearray(index_path.read_bytes())
    home = home_slot(77, seed, 4096)
    data[slot_offset(home) + SLOT_FIELD["tag"]] = 0x07
    index_path.write_bytes(bytes(data))
    with DiskHashIndex(index_path, readonly=True) as idx:
        with pytest.raises(CorruptIndexError, match="bad tag 0x07"):
            idx.get(77)


def test_unknown_compression_byte_is_an_error_not_none(index_path):
    with DiskHashIndex(index_path) as idx:
        idx.insert(77, PayloadMeta(77, 1, 2, 1, 3))
        seed = idx.seed
    from diskhash._format.sochidx2 import home_slot

    data = bytearray(index_path.read_bytes())
    slot = home_slot(77, seed, 4096)
    assert data[slot_offset(slot) + SLOT_FIELD["tag"]] == 1
    data[slot_offset(slot) + SLOT_FIELD["compression"]] = 9
    index_path.write_bytes(bytes(data))
    with DiskHashIndex(index_path, readonly=True) as idx:
        assert 77 in idx
        with pytest.raises(CorruptIndexError, match="unknown compression byte 9"):
            idx.get(77)
