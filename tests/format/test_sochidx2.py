"""The SOCHIDX2 contract: hash vectors, Rust-written fixtures, files we write."""

from __future__ import annotations

import random

import pytest
from helpers.data import DATA, FIXTURES, load_tsv
from helpers.spec_model import HEADER, HEADER_FIELD, assert_valid, file_size, spec_hash

from diskhash import Compression, DiskHashIndex, PayloadMeta
from diskhash._format.sochidx2 import hash_key, home_slot

VECTORS = [
    (0, 0xA79E36B6C73423FB),
    (1, 0x56EA9D3DEDC44B64),
    (2**64 - 1, 0x46E3189CF2B8252C),
    (2**64, 0xE73533312DFB66B6),
    (2**128 - 1, 0x50D88B2816B096C5),
]


@pytest.mark.parametrize("key,expected", VECTORS)
def test_hash_matches_spec_vectors(key, expected):
    assert hash_key(key, 0xDEADBEEF) == expected
    assert spec_hash(key, 0xDEADBEEF) == expected


def test_compiled_hash_matches_python_model_on_random_keys():
    rng = random.Random(1)
    for _ in range(2000):
        key, seed = rng.getrandbits(128), rng.getrandbits(64)
        assert hash_key(key, seed) == spec_hash(key, seed)
        assert home_slot(key, seed, 4096) == spec_hash(key, seed) & 4095


@pytest.mark.parametrize("name", FIXTURES)
def test_rust_fixture_reads_back_exactly(name, fixture_copy):
    expected = load_tsv(name)
    path = fixture_copy(name)
    path.chmod(0o444)          # read-only opens need no write permission
    with DiskHashIndex(path, readonly=True) as idx:
        assert len(idx) == len(expected)
        for key, row in expected.items():
            assert idx[key] == row
            assert key in idx
        got = dict(idx.items())
        assert got == expected
        assert sorted(idx.keys()) == sorted(expected)
        idx.verify()


@pytest.mark.parametrize("name", FIXTURES)
def test_rust_fixture_is_valid_for_the_python_model(name):
    assert assert_valid((DATA / f"{name}.idx").read_bytes()) == load_tsv(name)


def test_rust_fixture_accepts_writes_and_stays_valid(fixture_copy):
    path = fixture_copy("threshold")
    expected = load_tsv("threshold")
    # threshold holds 3072 entries in 4096 slots: the next new key grows it.
    with DiskHashIndex(path) as idx:
        seed = idx.seed
        assert idx.num_slots == 4096
        new_key = 2**127 + 12345
        idx.insert(new_key, PayloadMeta(new_key, 1, 2, Compression.ZSTD, 3))
        assert idx.num_slots == 8192
        assert idx.seed == seed
    expected[new_key] = (new_key, 1, 2, 2, 3)
    assert assert_valid(path.read_bytes()) == expected


def test_written_file_is_valid_for_any_spec_reader(index_path):
    rng = random.Random(7)
    model = {}
    with DiskHashIndex(index_path) as idx:
        for i in range(10_000):
            key = rng.getrandbits(rng.choice((16, 64, 128)))
            meta = PayloadMeta(key, rng.getrandbits(64), rng.getrandbits(32),
                               rng.randrange(3), rng.getrandbits(32))
            idx.insert(key, meta)
            model[key] = tuple(meta)
            if i % 7 == 0 and model:
                victim = rng.choice(list(model))
                assert idx.delete(victim)
                del model[victim]
        idx.save()
        # Valid while open (after save) and after close.
        assert assert_valid(index_path.read_bytes()) == model
    assert assert_valid(index_path.read_bytes()) == model


def test_new_file_layout(index_path):
    DiskHashIndex(index_path).close()
    data = index_path.read_bytes()
    assert len(data) == file_size(4096)
    magic, version, _, num_slots, num_entries, seed, _ = HEADER.unpack_from(data)
    assert (magic, version, num_slots, num_entries) == (b"SOCHIDX2", 1, 4096, 0)
    assert seed != 0
    after_seed = HEADER_FIELD["seed"] + 8       # reserved header bytes, then empty slots
    assert data[after_seed:] == bytes(len(data) - after_seed)


def test_seeds_differ_between_files(tmp_path):
    seeds = set()
    for i in range(5):
        with DiskHashIndex(tmp_path / f"{i}.idx") as idx:
            seeds.add(idx.seed)
    assert len(seeds) == 5


def test_capacity_presizes_so_bulk_load_never_grows(index_path):
    with DiskHashIndex(index_path, capacity=100_000) as idx:
        slots = idx.num_slots
        assert idx.capacity >= 100_000
        for k in range(100_000):
            idx.insert(k, PayloadMeta(k, k, 1, 0, 1))
        assert idx.num_slots == slots
    # 100_000 / 131072 slots would exceed 0.75; the next power of two fits.
    assert slots == 262144
